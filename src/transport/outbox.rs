//! Writes from the event loop, with a writer thread behind each socket for
//! when the socket is slow.
//!
//! Handing every reply and frame to a writer thread costs a wake-up and two
//! context switches per hand-off, which on a small machine cost more than the
//! write itself. So the loop writes itself when it can: at the end of each
//! turn it writes what the turn produced for each socket in one `write`, with
//! the socket's send timeout at [`DIRECT_WRITE_MS_MAX`]. A socket with room in
//! its send buffer takes the bytes at once. One without (a peer that stopped
//! reading, a client that does not read its replies) makes the write fall
//! short within that timeout; the rest goes to the socket's writer thread,
//! which owns the socket from then on, with the long timeout, and the loop
//! only queues for it. So the loop never waits on a slow socket for more than
//! one clock tick, and only once per slow episode.
//!
//! The state each socket's loop side and writer thread share sits behind one
//! mutex: whoever writes holds it, so bytes never interleave.

use super::is_timeout;
use crate::client::Reply;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest a write from the event loop waits for room in a socket's send
/// buffer before the socket's writer thread takes over. The kernel rounds it
/// up to one clock tick (1–10 ms).
pub const DIRECT_WRITE_MS_MAX: u64 = 1;

/// The send timeout of a socket the loop writes to.
pub(super) fn direct_write_timeout() -> Option<Duration> {
    Some(Duration::from_millis(DIRECT_WRITE_MS_MAX))
}

/// Writes as much of `bytes` as the socket takes before its send timeout.
/// Returns how many bytes went out; an error other than the timeout is
/// returned as is (how much went out before it does not matter to callers,
/// which give up on the socket or re-send whole frames on a new one).
pub(super) fn write_some(mut stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match stream.write(&bytes[written..]) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "socket took no bytes")),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// One outbound peer link's state, shared by the loop and the link's writer
/// thread.
#[derive(Debug, Default)]
pub(super) struct PeerOut {
    state: Mutex<PeerState>,
    /// The writer thread waits here for work (or for the end).
    wake: Condvar,
}

/// Where the link is.
#[derive(Debug, Default)]
pub(super) enum Link {
    /// Not connected (dialing or backing off): frames are discarded, since
    /// they would be stale by the time a new link is up.
    #[default]
    Down,
    /// The peer reset the link while a batch was going out; the writer is
    /// dialing again at once and frames queue behind that batch.
    Retrying,
    /// Connected. `writer_owns`: the writer thread is writing the queue, so
    /// the loop only adds to it.
    Up { stream: TcpStream, writer_owns: bool },
}

/// See [`PeerOut`].
#[derive(Debug, Default)]
pub(super) struct PeerState {
    pub link: Link,
    /// Whole frames (a partly written one first, after a short write)
    /// waiting for the writer thread.
    pub queue: Vec<u8>,
    /// Frames in `queue`, for the bound and the discard count.
    pub frames: usize,
    /// A write from the loop failed; the writer handles the link's end.
    pub failed: Option<io::Error>,
    writer_waiting: bool,
    /// The loop's side is gone: the writer stops.
    pub closed: bool,
}

/// How much a peer writer's queue may hold. A peer that reads more slowly
/// than the leader writes (a follower starved of CPU, 64 KiB values) would
/// otherwise let the queue grow by the difference for as long as the load
/// lasts; past the bound frames are dropped and counted, and the protocol
/// re-sends or the peer fetches what it misses.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bound {
    pub frames: usize,
    pub bytes: usize,
}

/// What became of one batch of frames handed to [`PeerOut::deliver`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Delivered {
    /// Written, or queued for the writer thread.
    Sent,
    /// The writer's queue was full: the batch's frames were dropped.
    Dropped,
    /// The link was down: the batch's frames were discarded.
    Discarded,
}

impl PeerOut {
    pub(super) fn lock(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The loop's side: writes `bytes` (`frames` whole frames) now if the
    /// link is up and idle, else queues them for the writer within `bound`
    /// (an empty queue takes any batch), else drops them.
    pub(super) fn deliver(&self, bytes: &[u8], frames: usize, bound: Bound) -> Delivered {
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.closed {
            return Delivered::Discarded;
        }
        match &mut st.link {
            Link::Down => Delivered::Discarded,
            Link::Up { stream, writer_owns: false } => {
                debug_assert!(st.queue.is_empty(), "the loop writes only with nothing queued");
                match write_some(stream, bytes) {
                    Ok(n) if n == bytes.len() => return Delivered::Sent,
                    Ok(n) => st.queue.extend_from_slice(&bytes[n..]),
                    Err(e) => {
                        // The writer ends the link and re-sends the whole
                        // batch if the peer only restarted.
                        st.failed = Some(e);
                        st.queue.extend_from_slice(bytes);
                    }
                }
                st.frames += frames;
                if let Link::Up { writer_owns, .. } = &mut st.link {
                    *writer_owns = true;
                }
                self.wake_writer(guard);
                Delivered::Sent
            }
            Link::Retrying | Link::Up { writer_owns: true, .. } => {
                let over_bytes = st.queue.len() + bytes.len() > bound.bytes;
                if st.frames + frames > bound.frames || (over_bytes && !st.queue.is_empty()) {
                    return Delivered::Dropped;
                }
                st.queue.extend_from_slice(bytes);
                st.frames += frames;
                self.wake_writer(guard);
                Delivered::Sent
            }
        }
    }

    fn wake_writer(&self, st: MutexGuard<'_, PeerState>) {
        let wake = st.writer_waiting;
        drop(st);
        if wake {
            self.wake.notify_one();
        }
    }

    /// The loop's side is gone: the writer thread ends.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// The writer's side: parks until `ready` holds for the state (or the
    /// deadline passes), and returns the state locked.
    pub(super) fn wait_until(
        &self,
        deadline: Option<Instant>,
        mut ready: impl FnMut(&mut PeerState) -> bool,
    ) -> MutexGuard<'_, PeerState> {
        let mut st = self.lock();
        loop {
            if ready(&mut st) {
                return st;
            }
            st.writer_waiting = true;
            st = match deadline {
                None => self.wake.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        st.writer_waiting = false;
                        return st;
                    }
                    self.wake.wait_timeout(st, deadline - now).unwrap_or_else(|e| e.into_inner()).0
                }
            };
            st.writer_waiting = false;
        }
    }
}

/// One client connection's replies, shared by the loop (which answers most
/// commands), the connection's reader (parse errors, HELP, QUIT, and the
/// end of the connection) and its writer thread. Replies go out in the
/// order the reader numbered the lines, whoever answers first.
#[derive(Debug)]
pub struct ClientOut {
    /// The connection's write side.
    stream: TcpStream,
    state: Mutex<ClientState>,
    /// The writer thread waits here for work (or for the end).
    writer_cv: Condvar,
    /// The reader waits here for a credit.
    reader_cv: Condvar,
}

/// Who writes a client's replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writes {
    /// The loop writes at the end of its turn (short send timeout).
    Loop,
    /// The writer thread writes everything (long send timeout): once a
    /// write from the loop fell short, once the reader answered something
    /// itself, or once the reader has ended.
    Thread,
}

#[derive(Debug)]
struct ClientState {
    /// Sequence number of the next reply to encode.
    next: u64,
    /// Replies that arrived before their turn.
    early: BTreeMap<u64, Reply>,
    /// Encoded replies, in order, not written yet.
    bytes: Vec<u8>,
    /// Replies in `bytes`.
    replies: usize,
    /// Lines the reader numbered whose reply is not written yet.
    unanswered: usize,
    writes: Writes,
    /// The reader has ended after this many lines (or a BYE was encoded):
    /// the writer closes once they are all written.
    owed: Option<u64>,
    /// A write failed or the connection was aborted: nothing more is written.
    failed: bool,
    writer_waiting: bool,
    reader_waiting: bool,
    /// While the reader waits in [`ClientOut::wait_answered`]: the `next`
    /// it waits for (`u64::MAX` otherwise, so a reply never wakes a reader
    /// that waits for a credit).
    reader_wants_next: u64,
}

/// What the writer thread is to do next.
pub(super) enum WriterTurn {
    /// Write these bytes (holding this many replies).
    Write(Vec<u8>, usize),
    /// Every owed reply is written: close.
    Done,
    /// The connection failed or was aborted, or the drain deadline passed.
    Stop,
}

impl ClientOut {
    /// Replies for `stream`'s connection; the loop writes them while the
    /// socket keeps up. Sets the socket's send timeout for that.
    pub(super) fn new(stream: TcpStream) -> io::Result<ClientOut> {
        stream.set_write_timeout(direct_write_timeout())?;
        Ok(ClientOut {
            stream,
            state: Mutex::new(ClientState {
                next: 0,
                early: BTreeMap::new(),
                bytes: Vec::new(),
                replies: 0,
                unanswered: 0,
                writes: Writes::Loop,
                owed: None,
                failed: false,
                writer_waiting: false,
                reader_waiting: false,
                reader_wants_next: u64::MAX,
            }),
            writer_cv: Condvar::new(),
            reader_cv: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ClientState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The loop's side: adds the reply to line `seq`; it is written at the
    /// next [`ClientOut::flush`].
    pub fn reply(&self, seq: u64, reply: Reply) {
        let mut st = self.lock();
        st.add(seq, reply);
        let wake = st.reader_waiting && st.next >= st.reader_wants_next;
        drop(st);
        if wake {
            self.reader_cv.notify_one();
        }
    }

    /// The reader's side: waits until the reply to line `seq` (and so to
    /// every line before it) is in, written or not. Returns false when the
    /// connection failed.
    pub(super) fn wait_answered(&self, seq: u64) -> bool {
        let mut st = self.lock();
        while st.next <= seq && !st.failed {
            st.reader_waiting = true;
            st.reader_wants_next = seq + 1;
            st = self.reader_cv.wait(st).unwrap_or_else(|e| e.into_inner());
            st.reader_waiting = false;
        }
        st.reader_wants_next = u64::MAX;
        !st.failed
    }

    /// The loop's side: writes every reply that is ready, or leaves them to
    /// the writer thread when it writes (see [`Writes`]).
    pub fn flush(&self) {
        let mut st = self.lock();
        if st.failed || st.bytes.is_empty() {
            return;
        }
        if st.writes == Writes::Thread {
            self.wake_writer(st);
            return;
        }
        match write_some(&self.stream, &st.bytes) {
            Ok(n) if n == st.bytes.len() => {
                st.bytes.clear();
                let written = std::mem::take(&mut st.replies);
                self.answered(st, written);
            }
            Ok(n) => {
                // The client is not reading fast enough: from now on its
                // writer thread writes, and the loop never waits for it.
                st.bytes.drain(..n);
                st.writes = Writes::Thread;
                self.wake_writer(st);
            }
            Err(_) => {
                st.failed = true;
                self.wake_all(st);
            }
        }
    }

    /// The reader's side: takes a credit for one more numbered line, waiting
    /// while `max` are unanswered. Returns whether it had to wait, or `None`
    /// when the connection failed.
    pub(super) fn take_credit(&self, max: usize) -> Option<bool> {
        let mut st = self.lock();
        let waited = st.unanswered >= max;
        while st.unanswered >= max && !st.failed {
            st.reader_waiting = true;
            st = self.reader_cv.wait(st).unwrap_or_else(|e| e.into_inner());
            st.reader_waiting = false;
        }
        if st.failed {
            return None;
        }
        st.unanswered += 1;
        Some(waited)
    }

    /// The reader's side: answers line `seq` itself; the writer thread
    /// writes from now on.
    pub(super) fn reader_reply(&self, seq: u64, reply: Reply) {
        let mut st = self.lock();
        st.add(seq, reply);
        st.writes = Writes::Thread;
        self.wake_writer(st);
    }

    /// The reader's side: it stopped after `lines` lines; the writer
    /// delivers what is owed, then closes.
    pub(super) fn finish(&self, lines: u64) {
        let mut st = self.lock();
        st.owed = Some(st.owed.map_or(lines, |o| o.min(lines)));
        st.writes = Writes::Thread;
        self.wake_writer(st);
    }

    /// The connection is over at once (an error, the idle timeout).
    pub(super) fn abort(&self) {
        let mut st = self.lock();
        st.failed = true;
        self.wake_all(st);
    }

    /// The writer's side: waits for its next turn, until `deadline` once the
    /// reader has ended (`None` until then; the deadline is the caller's,
    /// set when it first sees the reader ended).
    pub(super) fn writer_turn(&self, drain_ms: u64, deadline: &mut Option<Instant>) -> WriterTurn {
        let mut st = self.lock();
        loop {
            if st.failed {
                return WriterTurn::Stop;
            }
            if st.writes == Writes::Thread && !st.bytes.is_empty() {
                let replies = std::mem::take(&mut st.replies);
                return WriterTurn::Write(std::mem::take(&mut st.bytes), replies);
            }
            if let Some(owed) = st.owed {
                if st.next >= owed && st.bytes.is_empty() {
                    return WriterTurn::Done;
                }
                let at = *deadline
                    .get_or_insert_with(|| Instant::now() + Duration::from_millis(drain_ms));
                let now = Instant::now();
                if now >= at {
                    return WriterTurn::Stop;
                }
                st.writer_waiting = true;
                st = self.writer_cv.wait_timeout(st, at - now).unwrap_or_else(|e| e.into_inner()).0;
            } else {
                st.writer_waiting = true;
                st = self.writer_cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.writer_waiting = false;
        }
    }

    /// The writer's side: `replies` replies were written (or, with `ok`
    /// false, the write failed and the connection is over).
    pub(super) fn written(&self, replies: usize, ok: bool) {
        let mut st = self.lock();
        if ok {
            self.answered(st, replies);
        } else {
            st.failed = true;
            self.wake_all(st);
        }
    }

    /// The socket, for the writer thread.
    pub(super) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Gives back `replies` credits.
    fn answered(&self, mut st: MutexGuard<'_, ClientState>, replies: usize) {
        st.unanswered = st.unanswered.saturating_sub(replies);
        let wake_reader = st.reader_waiting;
        let wake_writer = st.writer_waiting && st.owed.is_some();
        drop(st);
        if wake_reader {
            self.reader_cv.notify_one();
        }
        if wake_writer {
            self.writer_cv.notify_one();
        }
    }

    fn wake_writer(&self, st: MutexGuard<'_, ClientState>) {
        let wake = st.writer_waiting;
        drop(st);
        if wake {
            self.writer_cv.notify_one();
        }
    }

    fn wake_all(&self, st: MutexGuard<'_, ClientState>) {
        drop(st);
        self.writer_cv.notify_one();
        self.reader_cv.notify_one();
    }
}

impl ClientState {
    /// Adds the reply to line `seq` and encodes every reply now in order.
    fn add(&mut self, seq: u64, reply: Reply) {
        if self.failed || seq < self.next {
            return;
        }
        if seq > self.next {
            self.early.insert(seq, reply);
            return;
        }
        self.encode(reply);
        while let Some(reply) = self.early.remove(&self.next) {
            self.encode(reply);
        }
    }

    fn encode(&mut self, reply: Reply) {
        reply.encode(&mut self.bytes);
        self.replies += 1;
        self.next += 1;
        if reply == Reply::Bye {
            // Nothing after BYE: the connection closes once it is written.
            self.owed = Some(self.next);
            self.writes = Writes::Thread;
            self.early.clear();
        }
    }
}
