//! Crossbeam channels whose receiver parks without spinning.
//!
//! Every queue between threads (reader threads to the event loop, the loop
//! to its disk thread and to peer writer threads) is a crossbeam channel.
//! What this module changes is only how an idle receiver waits. crossbeam's
//! blocking `recv` spins, then calls `sched_yield` several times, before it
//! parks. On a machine with few cores and many threads each of those yields
//! is a context switch: measured on a 2-core VM under one client writing
//! through a follower, the replica threads made about 30 `sched_yield` calls
//! per write and burned most of a core. Here the receiver only ever calls
//! `try_recv`; when the channel is empty it parks its thread at
//! once, and a [`Sender`] wakes it only when it is parked, so a busy
//! receiver costs its senders nothing beyond crossbeam's own push.
//!
//! No wake-up is lost: the receiver announces that it is about to park and
//! then looks at the channel once more, the sender pushes and then looks at
//! the announcement, with a sequentially consistent fence between the two
//! steps on each side. At least one of them sees the other, and an unpark
//! that comes before the park makes the park return at once.
//!
//! Disconnection is crossbeam's: a receive fails once every sender is gone
//! and the channel is empty, a send fails once the receiver is gone. A
//! sender blocked on a full bounded channel waits inside crossbeam (only
//! under overload, where a few yields do not matter).

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, Thread};
use std::time::Instant;

pub use crossbeam_channel::{RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};

/// A channel that holds at most `cap` items (at least 1); senders wait for room.
pub fn bounded<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(cap.max(1));
    wrap(tx, rx)
}

/// A channel without a bound; senders never wait.
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    wrap(tx, rx)
}

fn wrap<T>(
    tx: crossbeam_channel::Sender<T>,
    rx: crossbeam_channel::Receiver<T>,
) -> (Sender<T>, Receiver<T>) {
    let parker = Arc::new(Parker { parked: AtomicBool::new(false), receiver: Mutex::new(None) });
    (Sender { tx: Some(tx), parker: Arc::clone(&parker) }, Receiver { rx, parker })
}

/// How the receiver sleeps while its channel is empty: it parks its thread
/// (one futex wait), and the first sender to see it parked unparks it (one
/// futex wake). No lock is taken on either side of a hand-off.
struct Parker {
    /// The receiver is parked, or about to park. A sender that swaps it
    /// from true to false owns the wake-up; later senders skip it.
    parked: AtomicBool,
    /// The thread the receiver last waited on (it may move between
    /// threads; it is set before `parked`, so a sender that sees `parked`
    /// finds the right thread here).
    receiver: Mutex<Option<Thread>>,
}

impl Parker {
    /// Called by a sender after its push (or its disconnect).
    fn unpark(&self) {
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            if let Some(thread) = self.receiver.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                thread.unpark();
            }
        }
    }

    /// Called by the receiver before it announces that it parks.
    fn register(&self) {
        let me = thread::current();
        let mut receiver = self.receiver.lock().unwrap_or_else(|e| e.into_inner());
        if receiver.as_ref().map(Thread::id) != Some(me.id()) {
            *receiver = Some(me);
        }
    }
}

/// The sending side; clone it for more senders.
pub struct Sender<T> {
    /// Always `Some` until drop, which lets go of it before waking the
    /// receiver (so a last sender's disconnect is seen).
    tx: Option<crossbeam_channel::Sender<T>>,
    parker: Arc<Parker>,
}

impl<T> Sender<T> {
    fn tx(&self) -> &crossbeam_channel::Sender<T> {
        self.tx.as_ref().expect("a live sender holds its channel")
    }

    /// Queues `item`, waiting while the channel is full. Fails, giving the
    /// item back, when the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        self.tx().send(item)?;
        self.parker.unpark();
        Ok(())
    }

    /// Queues `item` if there is room, never waiting.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.tx().try_send(item)?;
        self.parker.unpark();
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender { tx: self.tx.clone(), parker: Arc::clone(&self.parker) }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        drop(self.tx.take());
        self.parker.unpark();
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mailbox::Sender")
    }
}

/// The receiving side (one per channel).
pub struct Receiver<T> {
    rx: crossbeam_channel::Receiver<T>,
    parker: Arc<Parker>,
}

impl<T> Receiver<T> {
    /// Waits for the next item. Fails once every sender is gone and the
    /// channel is empty.
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
        self.rx.is_empty()
    }

    /// The next item if one is queued.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv()
    }

    /// Waits until an item is queued or `deadline` passes (`None`: forever),
    /// then moves up to `max` queued items into `out`. Returns how many it
    /// moved (0 only at the deadline); fails once every sender is gone and
    /// the channel is empty.
    pub fn recv_batch(
        &self,
        out: &mut Vec<T>,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<usize, RecvError> {
        let first = match self.recv_until(deadline) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => return Ok(0),
            Err(RecvTimeoutError::Disconnected) => return Err(RecvError),
        };
        out.push(first);
        let mut n = 1;
        while n < max {
            match self.rx.try_recv() {
                Ok(item) => {
                    out.push(item);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        Ok(n)
    }

    /// The next item once one is queued, or `Timeout` once `deadline`
    /// (`None`: never) has passed.
    fn recv_until(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        loop {
            if let Some(result) = self.poll() {
                return result;
            }
            let wait = match deadline {
                None => None,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(RecvTimeoutError::Timeout),
                },
            };
            self.parker.register();
            self.parker.parked.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            // Looked at again after the announcement: a sender that pushed
            // before it could see the announcement is caught here.
            if let Some(result) = self.poll() {
                self.parker.parked.store(false, Ordering::SeqCst);
                return result;
            }
            // A park may also end early (an unpark meant for an earlier
            // wait, or a spurious wake-up): the loop looks again.
            match wait {
                None => thread::park(),
                Some(left) => thread::park_timeout(left),
            }
            self.parker.parked.store(false, Ordering::SeqCst);
        }
    }

    /// The next item, or the disconnect, if either is there now.
    fn poll(&self) -> Option<Result<T, RecvTimeoutError>> {
        match self.rx.try_recv() {
            Ok(item) => Some(Ok(item)),
            Err(TryRecvError::Disconnected) => Some(Err(RecvTimeoutError::Disconnected)),
            Err(TryRecvError::Empty) => None,
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
    fn no_wake_up_is_lost_in_a_ping_pong() {
        // Every round parks one side and needs the other's send to wake it:
        // a lost wake-up shows as a round that times out.
        let (ping_tx, ping_rx) = bounded::<u32>(1);
        let (pong_tx, pong_rx) = unbounded::<u32>();
        let echo = thread::spawn(move || {
            while let Ok(n) = ping_rx.recv_timeout(Duration::from_secs(10)) {
                pong_tx.send(n).unwrap();
            }
        });
        for i in 0..20_000 {
            ping_tx.send(i).unwrap();
            assert_eq!(pong_rx.recv_timeout(Duration::from_secs(10)), Ok(i), "round {i}");
        }
        drop(ping_tx);
        echo.join().unwrap();
        assert_eq!(pong_rx.recv(), Err(RecvError), "the echo thread's sender is gone");
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
