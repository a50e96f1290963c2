//! Queues between threads that wait without spinning.
//!
//! crossbeam's channels spin, then call `sched_yield` several times, before
//! a receiver parks (and again in `select!`). On a machine with few cores and
//! many threads each of those yields is a context switch: measured on a
//! 2-core VM under one client writing through a follower, the replica threads
//! made about 30 `sched_yield` calls per write and burned most of a core. A
//! [`Receiver`] here parks on a condition variable at once when its queue is
//! empty, and a [`Sender`] wakes it only when it is parked, so a busy
//! receiver costs its senders no system call at all.
//!
//! Each queue has any number of senders and one receiver, and the
//! disconnect rules of a channel: a receive fails once every sender is gone
//! and the queue is empty, a send fails once the receiver is gone. The error
//! types are crossbeam's, so callers read as they would with a channel.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

pub use crossbeam_channel::{RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};

/// A queue that holds at most `cap` items (at least 1); senders wait for room.
pub fn bounded<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    with_cap(cap.max(1))
}

/// A queue without a bound; senders never wait.
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    with_cap(usize::MAX)
}

fn with_cap<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            cap,
            senders: 1,
            receiver: true,
            receiver_waiting: false,
            senders_waiting: 0,
        }),
        items: Condvar::new(),
        room: Condvar::new(),
    });
    (Sender { shared: Arc::clone(&shared) }, Receiver { shared })
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// The receiver waits here for an item.
    items: Condvar,
    /// Senders wait here for room.
    room: Condvar,
}

struct State<T> {
    queue: VecDeque<T>,
    /// Most items queued at once.
    cap: usize,
    /// Live [`Sender`]s.
    senders: usize,
    /// False once the [`Receiver`] is dropped.
    receiver: bool,
    /// The receiver is parked on `items`.
    receiver_waiting: bool,
    /// Senders parked on `room`.
    senders_waiting: usize,
}

impl<T> Shared<T> {
    /// The state; a thread that panicked holding the lock left it consistent
    /// (every change below is a single push, pop or counter update).
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side; clone it for more senders.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `item`, waiting while the queue is full. Fails, giving the item
    /// back, when the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        let mut state = self.shared.lock();
        loop {
            if !state.receiver {
                return Err(SendError(item));
            }
            if state.queue.len() < state.cap {
                self.push(state, item);
                return Ok(());
            }
            state.senders_waiting += 1;
            state = self.shared.room.wait(state).unwrap_or_else(|e| e.into_inner());
            state.senders_waiting -= 1;
        }
    }

    /// Queues `item` if there is room, never waiting.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let state = self.shared.lock();
        if !state.receiver {
            return Err(TrySendError::Disconnected(item));
        }
        if state.queue.len() >= state.cap {
            return Err(TrySendError::Full(item));
        }
        self.push(state, item);
        Ok(())
    }

    fn push(&self, mut state: MutexGuard<'_, State<T>>, item: T) {
        state.queue.push_back(item);
        let wake = state.receiver_waiting;
        drop(state);
        if wake {
            self.shared.items.notify_one();
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender { shared: Arc::clone(&self.shared) }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        let wake = state.senders == 0 && state.receiver_waiting;
        drop(state);
        if wake {
            self.shared.items.notify_one();
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mailbox::Sender")
    }
}

/// The receiving side (one per queue).
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// Waits for the next item. Fails once every sender is gone and the
    /// queue is empty.
    pub fn recv(&self) -> Result<T, RecvError> {
        self.recv_until(None).map_err(|_| RecvError)
    }

    /// Waits for the next item until `deadline`.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<T, RecvTimeoutError> {
        self.recv_until(Some(deadline))
    }

    /// Waits for the next item for at most `timeout`.
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Result<T, RecvTimeoutError> {
        self.recv_until(Some(Instant::now() + timeout))
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.shared.lock().queue.is_empty()
    }

    /// The next item if one is queued.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut state = self.shared.lock();
        match state.queue.pop_front() {
            Some(item) => {
                self.made_room(state, 1);
                Ok(item)
            }
            None if state.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Waits until an item is queued or `deadline` passes (`None`: forever),
    /// then moves up to `max` queued items into `out` under one lock. Returns
    /// how many it moved (0 only at the deadline); fails once every sender is
    /// gone and the queue is empty.
    pub fn recv_batch(
        &self,
        out: &mut Vec<T>,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<usize, RecvError> {
        let mut state = self.wait(deadline)?;
        let n = state.queue.len().min(max);
        out.extend(state.queue.drain(..n));
        self.made_room(state, n);
        Ok(n)
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        let mut state = self.wait(deadline).map_err(|_| RecvTimeoutError::Disconnected)?;
        match state.queue.pop_front() {
            Some(item) => {
                self.made_room(state, 1);
                Ok(item)
            }
            None => Err(RecvTimeoutError::Timeout),
        }
    }

    /// The locked state once the queue holds an item or `deadline` passed.
    fn wait(&self, deadline: Option<Instant>) -> Result<MutexGuard<'_, State<T>>, RecvError> {
        let mut state = self.shared.lock();
        loop {
            if !state.queue.is_empty() {
                return Ok(state);
            }
            if state.senders == 0 {
                return Err(RecvError);
            }
            state.receiver_waiting = true;
            state = match deadline {
                None => self.shared.items.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        state.receiver_waiting = false;
                        return Ok(state);
                    }
                    let (state, _) = self
                        .shared
                        .items
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|e| e.into_inner());
                    state
                }
            };
            state.receiver_waiting = false;
        }
    }

    /// `taken` items left the queue: wake senders waiting for room.
    fn made_room(&self, state: MutexGuard<'_, State<T>>, taken: usize) {
        let waiting = state.senders_waiting;
        drop(state);
        if waiting > 0 && taken > 0 {
            if taken == 1 {
                self.shared.room.notify_one();
            } else {
                self.shared.room.notify_all();
            }
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver = false;
        // Items still queued go with the receiver, as they would with a channel.
        let queued = std::mem::take(&mut state.queue);
        let wake = state.senders_waiting > 0;
        drop(state);
        drop(queued);
        if wake {
            self.shared.room.notify_all();
        }
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mailbox::Receiver")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use std::time::Duration;

    #[test]
    fn items_arrive_in_order_across_threads() {
        let (tx, rx) = bounded(4);
        let sender = thread::spawn(move || {
            for i in 0..1000 {
                tx.send(i).unwrap();
            }
        });
        let got: Vec<i32> = (0..1000).map(|_| rx.recv().unwrap()).collect();
        sender.join().unwrap();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        assert_eq!(rx.recv(), Err(RecvError), "every sender is gone");
    }

    #[test]
    fn a_full_queue_refuses_try_send_and_holds_send_back() {
        let (tx, rx) = bounded(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        let blocked = thread::spawn(move || tx.send(3));
        let mut out = Vec::new();
        assert_eq!(rx.recv_batch(&mut out, 10, None), Ok(2));
        blocked.join().unwrap().unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(3));
        assert_eq!(out, vec![1, 2]);
    }

    #[test]
    fn a_batch_waits_for_its_deadline_and_takes_at_most_max() {
        let (tx, rx) = unbounded();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(20);
        assert_eq!(rx.recv_batch(&mut out, 10, Some(deadline)), Ok(0));
        assert!(Instant::now() >= deadline);
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        assert_eq!(rx.recv_batch(&mut out, 3, None), Ok(3));
        assert_eq!(rx.try_recv(), Ok(3));
        assert_eq!(out, vec![0, 1, 2]);
    }

    #[test]
    fn disconnects_like_a_channel() {
        let (tx, rx) = unbounded::<u8>();
        let tx2 = tx.clone();
        drop(tx);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        let waiter = thread::spawn(move || rx.recv());
        thread::sleep(Duration::from_millis(10));
        drop(tx2);
        assert_eq!(waiter.join().unwrap(), Err(RecvError));
        let (tx, rx) = bounded(1);
        drop(rx);
        assert_eq!(tx.send(7), Err(SendError(7)));
        assert_eq!(tx.try_send(7), Err(TrySendError::Disconnected(7)));
    }
}
