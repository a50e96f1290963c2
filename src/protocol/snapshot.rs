//! Snapshots and catch-up by snapshot (DESIGN §6).
//!
//! Every `snapshot_every_entries` applied entries a replica hands an image of
//! its store to storage ([`Output::SaveSnapshot`]); once storage reports it
//! durable ([`Input::SnapshotSaved`](super::Input)), the replica drops the log
//! prefix it covers (freeing it a slice per flush) and emits a [`Checkpoint`]
//! so storage can drop it too.
//!
//! An image is a clone of the [`Store`]: it shares every page with the live
//! store and costs a copy of the page pointers; a page the replica writes
//! while an image holds it is copied then (see `store.rs`). So neither a
//! periodic save nor a transfer holds a second copy of the whole store.
//!
//! A replica that asks for entries someone has compacted away gets the
//! responder's store instead, in chunks, each asked for by the receiver (so a
//! slow receiver sets the pace). A snapshot holds committed state only, so it
//! is installed only above the receiver's commit index (never a roll-back),
//! keeps every key's version, and the receiver keeps the entries above it that
//! it accepted (a quorum may depend on them).

use super::durable::{Checkpoint, Snapshot};
use super::message::{PeerMsg, SnapshotItem};
use super::store::Store;
use super::types::{LogIndex, Millis, ReplicaId};
use super::{Output, Persist, Replica};
use std::sync::Arc;

/// Bytes of keys and values per snapshot chunk: big enough to move tens of
/// MB/s, small enough that a chunk never holds up heartbeats on its link.
pub const SNAPSHOT_CHUNK_BYTES: usize = 256 * 1024;

/// Compacted log entries freed per flush: about a millisecond of work.
const COMPACTED_FREED_PER_FLUSH: usize = 4096;

/// A snapshot being sent to one peer: a fixed image, so every chunk comes from
/// the same index.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub image: Arc<Snapshot>,
    pub used_at: Millis,
}

/// A snapshot being received.
#[derive(Debug)]
pub(super) struct Incoming {
    pub from: ReplicaId,
    pub index: LogIndex,
    pub store: Store,
    pub last_key: Option<String>,
    /// Dropped (and asked for again) if no chunk arrives by then.
    pub deadline: Millis,
}

impl Replica {
    /// At flush: start a snapshot once enough entries were applied since the last.
    pub(super) fn maybe_snapshot(&mut self, out: &mut Vec<Output>) {
        self.free_compacted_log();
        if self.snapshot_pending.is_some() || self.learner {
            return;
        }
        let due =
            self.applied.0.saturating_sub(self.snapshot_index.0) >= self.cfg.snapshot_every_entries;
        if !(due || self.snapshot_requested) || self.applied <= self.snapshot_index {
            return;
        }
        self.snapshot_requested = false;
        self.save_snapshot_now(out);
    }

    /// Asks for a snapshot at the next flush (storage's log segment is large).
    pub fn request_snapshot(&mut self) {
        self.snapshot_requested = true;
    }

    fn save_snapshot_now(&mut self, out: &mut Vec<Output>) {
        let image = Snapshot { index: self.applied, store: self.store.clone() };
        self.snapshot_pending = Some(self.applied);
        out.push(Output::SaveSnapshot(Arc::new(image)));
    }

    /// Storage made a snapshot durable: drop the log prefix it covers and
    /// checkpoint the rest. An older save that finished late changes nothing.
    pub(super) fn on_snapshot_saved(&mut self, index: LogIndex, out: &mut Vec<Output>) {
        if self.snapshot_pending != Some(index) {
            return;
        }
        self.snapshot_pending = None;
        assert!(index <= self.applied, "snapshot {index} above applied {}", self.applied);
        self.snapshot_index = self.snapshot_index.max(index);
        self.drop_log_through(index);
        let checkpoint = Checkpoint {
            snapshot_index: index,
            incarnation: Some(self.incarnation),
            promise: self.promise,
            promise_leader: self.promise_leader,
            incarnations: self.incarnations.clone(),
            formation: self.formation,
            learner: self.learner,
            log: self.log.iter().map(|(i, e)| (*i, e.clone())).collect(),
            commit: self.commit,
        };
        out.push(Output::Persist(Persist::Checkpoint(Box::new(checkpoint))));
        crate::qlog!("snapshot at {index} saved; log compacted to {} entries", self.log.len());
    }

    /// Takes the log entries at or below `index` out of the log. Their memory
    /// is released a slice per flush (see [`Replica::free_compacted_log`]):
    /// freeing ~100,000 entries at once held the event loop for tens of ms
    /// on a busy machine, long enough for followers to call an election.
    fn drop_log_through(&mut self, index: LogIndex) {
        let kept = self.log.split_off(&index.next());
        let dropped = std::mem::replace(&mut self.log, kept);
        if !dropped.is_empty() {
            self.compacted_log.push(dropped);
        }
    }

    /// At flush: releases the next slice of compacted log entries.
    fn free_compacted_log(&mut self) {
        let Some(oldest) = self.compacted_log.first_mut() else { return };
        match oldest.keys().nth(COMPACTED_FREED_PER_FLUSH).copied() {
            Some(cut) => {
                let rest = oldest.split_off(&cut);
                drop(std::mem::replace(oldest, rest));
            }
            None => drop(self.compacted_log.remove(0)),
        }
    }

    /// A fetch reached below our log: send our store instead, from the start.
    pub(super) fn start_snapshot_transfer(
        &mut self,
        now: Millis,
        to: ReplicaId,
        out: &mut Vec<Output>,
    ) {
        let fresh = match self.outgoing.get(&to) {
            Some(o) => {
                o.image.index < self.applied && now.since(o.used_at) > self.cfg.election_timeout_ms
            }
            None => true,
        };
        if fresh {
            let image = Arc::new(Snapshot { index: self.applied, store: self.store.clone() });
            crate::qlog!(
                "catch-up: sending snapshot at {} ({} keys) to {to}",
                image.index,
                image.store.len()
            );
            self.outgoing.insert(to, Outgoing { image, used_at: now });
        }
        self.send_snapshot_chunk(now, to, None, out);
    }

    /// The receiver asks for the chunk after `after` of snapshot `index`.
    pub(super) fn on_snapshot_req(
        &mut self,
        now: Millis,
        from: ReplicaId,
        index: LogIndex,
        after: Option<String>,
        out: &mut Vec<Output>,
    ) {
        match self.outgoing.get(&from) {
            Some(o) if o.image.index == index => self.send_snapshot_chunk(now, from, after, out),
            _ => self.start_snapshot_transfer(now, from, out),
        }
    }

    fn send_snapshot_chunk(
        &mut self,
        now: Millis,
        to: ReplicaId,
        after: Option<String>,
        out: &mut Vec<Output>,
    ) {
        let Some(o) = self.outgoing.get_mut(&to) else { return };
        o.used_at = now;
        let image = o.image.clone();
        let mut items = Vec::new();
        let mut bytes = 0;
        let mut done = true;
        for r in image.store.range_after(after.as_deref()) {
            if bytes >= SNAPSHOT_CHUNK_BYTES {
                done = false;
                break;
            }
            let (key, value) = (r.key(), r.value());
            bytes += key.len() + value.len() + 16;
            items.push(SnapshotItem {
                key: key.to_string(),
                version: r.version(),
                value: value.to_vec(),
            });
        }
        if done {
            self.outgoing.remove(&to);
        }
        let msg = PeerMsg::SnapshotChunk { index: image.index, after, items, done };
        self.send(vec![to], msg, out);
    }

    /// One chunk of a snapshot arrives.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_snapshot_chunk(
        &mut self,
        now: Millis,
        from: ReplicaId,
        index: LogIndex,
        after: Option<String>,
        items: Vec<SnapshotItem>,
        done: bool,
        out: &mut Vec<Output>,
    ) {
        if index <= self.commit {
            self.incoming = None;
            return;
        }
        let deadline = now.plus(self.cfg.election_timeout_ms);
        let continues = self
            .incoming
            .as_ref()
            .is_some_and(|i| i.from == from && i.index == index && i.last_key == after);
        if !continues {
            if after.is_some() {
                // A chunk from the middle of a transfer we do not hold: start over.
                self.send(
                    vec![from],
                    PeerMsg::SnapshotReq { index: LogIndex(0), after: None },
                    out,
                );
                return;
            }
            if self.incoming.is_none() {
                crate::qlog!("catch-up: receiving snapshot at {index} from {from}");
            }
            self.incoming =
                Some(Incoming { from, index, store: Store::new(), last_key: None, deadline });
        }
        let incoming = self.incoming.as_mut().expect("set above");
        incoming.deadline = deadline;
        for item in items {
            incoming.store.insert(&item.key, item.version, &item.value);
            incoming.last_key = Some(item.key);
        }
        self.fetch = None;
        if done {
            let incoming = self.incoming.take().expect("set above");
            self.install_snapshot(now, incoming.index, incoming.store, out);
        } else {
            let after = incoming.last_key.clone();
            self.send(vec![from], PeerMsg::SnapshotReq { index, after }, out);
        }
    }

    /// Replaces the store with committed state at `index` (above our commit).
    fn install_snapshot(
        &mut self,
        now: Millis,
        index: LogIndex,
        store: Store,
        out: &mut Vec<Output>,
    ) {
        assert!(index > self.commit, "a snapshot never rolls a replica back");
        crate::qlog!("catch-up: installed snapshot at {index} ({} keys)", store.len());
        self.stats.snapshots_installed += 1;
        self.store = store;
        self.commit = index;
        self.applied = index;
        self.snapshot_index = index;
        self.chosen.retain(|i, _| *i > index);
        // Entries above the snapshot stay: we may have voted for them.
        self.drop_log_through(index);
        self.save_snapshot_now(out);
        self.after_commit_jump(now, out);
    }

    /// Snapshot timers: a stalled incoming transfer is dropped (the next fetch
    /// starts it over); idle outgoing images are released.
    pub(super) fn tick_snapshots(&mut self, now: Millis) {
        if self.incoming.as_ref().is_some_and(|i| now >= i.deadline) {
            crate::qlog!("catch-up: snapshot transfer stalled; will ask again");
            self.incoming = None;
        }
        let idle_ms = 4 * self.cfg.election_timeout_ms;
        self.outgoing.retain(|_, o| now.since(o.used_at) <= idle_ms);
    }
}
