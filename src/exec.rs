//! The output executor (DESIGN §1, §7): carries out a batch of protocol
//! outputs with the ordering rule that makes the protocol durable — a message
//! that reports durable state (a promise, a vote, a COORDINATOR, a formation
//! or registration answer) leaves only after every `Persist` before it is on
//! disk.
//!
//! The server and the simulator both use [`Executor`]; only the [`Storage`]
//! and [`Network`] behind it differ, so the simulator tests the real ordering.
//!
//! Everything else goes out at once: heartbeats, ACCEPTs, COMMITs, reads and
//! client replies never wait for a disk. That is safe because the leader
//! counts its own vote only when its own fsync is done — it sends that vote to
//! itself, held like any other vote and handed back through
//! [`Executor::take_loopback`] — so a commit index, a COMMIT or an `OK` never
//! rests on a write that is not durable on NW replicas.
//!
//! With the server's disk thread, syncs finish later ([`Storage::begin_sync`]
//! returns false) and [`Executor::synced`] releases what waited for them; many
//! batches can be in flight and the disk thread groups them into one fsync.

use crate::client::Reply;
use crate::protocol::durable::Persist;
use crate::protocol::message::{Envelope, PeerMsg};
use crate::protocol::types::{LogIndex, ReplicaId, ReqId};
use crate::protocol::Output;
use crate::storage::{self, Storage};
use std::collections::VecDeque;

/// Where sends and replies go.
pub trait Network {
    /// Sends one envelope to each replica in `to` (never to ourselves).
    fn send(&mut self, to: &[ReplicaId], env: &Envelope);
    /// Answers one client request.
    fn reply(&mut self, req: ReqId, reply: Reply);
}

/// What one `execute` call did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Executed {
    /// Persist ops written.
    pub persisted: usize,
    /// Syncs started (0 or 1).
    pub syncs: usize,
    /// Envelopes sent (counting each recipient).
    pub sent: usize,
    /// Client replies.
    pub replies: usize,
    /// Sends held for a sync still running.
    pub held: usize,
}

/// True when `msg` reports state that must be durable before anyone hears it.
/// HELLO and FORM report incarnations (a new directory's own, and FORM the
/// whole table), which peers record for good: a replica that crashed before
/// its incarnation was on disk would draw another nonce with the same
/// counter and be refused by them forever (DESIGN §6: an incarnation is
/// persisted before it is reported to anyone).
pub fn needs_durability(msg: &PeerMsg) -> bool {
    matches!(
        msg,
        PeerMsg::Promise { .. }
            | PeerMsg::Vote { .. }
            | PeerMsg::Coordinator { .. }
            | PeerMsg::Hello
            | PeerMsg::Form { .. }
            | PeerMsg::FormAck { .. }
            | PeerMsg::Formed { .. }
            | PeerMsg::Register
            | PeerMsg::Registered { .. }
    )
}

/// Carries out outputs in order, holding durable-state messages behind the
/// sync they depend on.
#[derive(Debug)]
pub struct Executor {
    /// This replica: messages addressed to it come back through `take_loopback`.
    me: ReplicaId,
    /// Syncs started so far; the n-th is ticket n.
    issued: u64,
    /// Syncs known durable.
    completed: u64,
    /// Sends waiting for their ticket, in order.
    held: VecDeque<(u64, ReplicaId, Envelope, Vec<ReplicaId>)>,
    /// Messages to ourselves, ready to be fed back as inputs.
    loopback: Vec<Envelope>,
}

impl Executor {
    /// An executor for replica `me`.
    pub fn new(me: ReplicaId) -> Executor {
        Executor { me, issued: 0, completed: 0, held: VecDeque::new(), loopback: Vec::new() }
    }

    /// Carries out `outputs` (draining it): every persist in order, one sync
    /// if any needs it, then every send and reply in order — a message that
    /// needs durability waits for the sync. A storage error is returned at once
    /// and nothing after it is sent: the replica must stop.
    pub fn execute(
        &mut self,
        outputs: &mut Vec<Output>,
        storage: &mut dyn Storage,
        net: &mut dyn Network,
    ) -> storage::Result<Executed> {
        let mut done = Executed::default();
        let mut needs_sync = false;
        for output in outputs.iter_mut() {
            if let Output::Persist(op) = output {
                needs_sync |= op.needs_sync();
                // The op is storage's now; a cheap stand-in keeps the slot
                // (every Persist output is skipped below).
                storage.persist_owned(std::mem::replace(op, Persist::Commit(LogIndex(0))))?;
                done.persisted += 1;
            }
        }
        if needs_sync {
            self.issued += 1;
            done.syncs = 1;
            if storage.begin_sync()? {
                self.completed = self.issued;
            }
        }
        for output in outputs.drain(..) {
            match output {
                Output::Persist(_) => {}
                Output::Send { to, env } => {
                    done.sent += to.len();
                    if needs_durability(&env.msg) && self.completed < self.issued {
                        done.held += 1;
                        self.held.push_back((self.issued, self.me, env, to));
                    } else {
                        self.deliver(to, env, net);
                    }
                }
                Output::Reply { req, reply } => {
                    done.replies += 1;
                    net.reply(req, reply);
                }
                Output::SaveSnapshot(snapshot) => storage.save_snapshot(snapshot)?,
            }
        }
        self.release(net);
        Ok(done)
    }

    /// The storage reports syncs up to `ticket` durable: release what waited.
    pub fn synced(&mut self, ticket: u64, net: &mut dyn Network) {
        assert!(ticket <= self.issued, "sync {ticket} reported, only {} started", self.issued);
        self.completed = self.completed.max(ticket);
        self.release(net);
    }

    /// Syncs started so far (the ticket of the latest).
    pub fn issued(&self) -> u64 {
        self.issued
    }

    /// True while a sync is running.
    pub fn is_syncing(&self) -> bool {
        self.completed < self.issued
    }

    /// Messages this replica sent itself (its own votes), in order. The caller
    /// feeds each back to the replica as `Input::Peer`.
    pub fn take_loopback(&mut self) -> Vec<Envelope> {
        std::mem::take(&mut self.loopback)
    }

    fn release(&mut self, net: &mut dyn Network) {
        while self.held.front().is_some_and(|(ticket, ..)| *ticket <= self.completed) {
            let (_, _, env, to) = self.held.pop_front().expect("checked above");
            self.deliver(to, env, net);
        }
    }

    fn deliver(&mut self, mut to: Vec<ReplicaId>, env: Envelope, net: &mut dyn Network) {
        if let Some(i) = to.iter().position(|id| *id == self.me) {
            to.remove(i);
            self.loopback.push(env.clone());
        }
        if !to.is_empty() {
            net.send(&to, &env);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::durable::{Persist, Snapshot};
    use crate::protocol::types::{Epoch, Formation, Incarnation, LogIndex};
    use std::sync::Arc;

    /// Records persists and syncs; `later` makes syncs finish later.
    #[derive(Default)]
    struct Recorder {
        events: Vec<String>,
        later: bool,
    }
    impl Storage for Recorder {
        fn persist(&mut self, op: &Persist) -> storage::Result<()> {
            self.events.push(format!("persist {op:?}"));
            Ok(())
        }
        fn sync(&mut self) -> storage::Result<()> {
            self.events.push("sync".into());
            Ok(())
        }
        fn begin_sync(&mut self) -> storage::Result<bool> {
            self.events.push("sync".into());
            Ok(!self.later)
        }
        fn save_snapshot(&mut self, snapshot: Arc<Snapshot>) -> storage::Result<()> {
            self.events.push(format!("snapshot {}", snapshot.index));
            Ok(())
        }
        fn snapshot_saved(&mut self) -> storage::Result<Option<LogIndex>> {
            Ok(None)
        }
    }
    struct Net<'a>(&'a mut Vec<String>);
    impl Network for Net<'_> {
        fn send(&mut self, to: &[ReplicaId], env: &Envelope) {
            self.0.push(format!("send {} to {to:?}", env.msg.name()));
        }
        fn reply(&mut self, req: ReqId, _reply: Reply) {
            self.0.push(format!("reply {}", req.0));
        }
    }

    fn env(msg: PeerMsg) -> Envelope {
        Envelope {
            from: ReplicaId(1),
            incarnation: Incarnation::default(),
            epoch: Epoch(1),
            formation: Formation::Blank,
            learner: false,
            msg,
        }
    }

    fn vote() -> PeerMsg {
        PeerMsg::Vote { epoch: Epoch(1), accepted: vec![LogIndex(1)], promised: Epoch(1) }
    }

    fn heartbeat() -> PeerMsg {
        PeerMsg::Heartbeat { epoch: Epoch(1), seq: 1, progress: None }
    }

    #[test]
    fn a_vote_leaves_only_after_its_sync_and_a_heartbeat_never_waits() {
        let mut storage = Recorder { later: true, ..Recorder::default() };
        let mut sent = Vec::new();
        let mut exec = Executor::new(ReplicaId(1));
        let mut outputs = vec![
            Output::Persist(Persist::Promise { epoch: Epoch(4), leader: None }),
            Output::Send { to: vec![ReplicaId(2)], env: env(vote()) },
            Output::Send { to: vec![ReplicaId(2)], env: env(heartbeat()) },
            Output::Reply { req: ReqId(9), reply: Reply::Written(1) },
        ];
        let done = exec.execute(&mut outputs, &mut storage, &mut Net(&mut sent)).unwrap();
        assert_eq!((done.syncs, done.held), (1, 1));
        assert_eq!(sent, vec!["send heartbeat to [ReplicaId(2)]", "reply 9"]);
        assert!(exec.is_syncing());
        exec.synced(1, &mut Net(&mut sent));
        assert_eq!(sent.last().unwrap(), "send vote to [ReplicaId(2)]");
        assert!(!exec.is_syncing());
    }

    #[test]
    fn a_vote_to_ourselves_comes_back_only_after_the_sync() {
        let mut storage = Recorder { later: true, ..Recorder::default() };
        let mut sent = Vec::new();
        let mut exec = Executor::new(ReplicaId(1));
        let mut outputs = vec![
            Output::Persist(Persist::Learner(false)),
            Output::Send { to: vec![ReplicaId(1), ReplicaId(3)], env: env(vote()) },
        ];
        exec.execute(&mut outputs, &mut storage, &mut Net(&mut sent)).unwrap();
        assert!(exec.take_loopback().is_empty() && sent.is_empty());
        // A second batch's vote waits for the second sync, not the first.
        let mut outputs = vec![
            Output::Persist(Persist::Learner(false)),
            Output::Send { to: vec![ReplicaId(1)], env: env(vote()) },
        ];
        exec.execute(&mut outputs, &mut storage, &mut Net(&mut sent)).unwrap();
        exec.synced(1, &mut Net(&mut sent));
        assert_eq!(exec.take_loopback().len(), 1);
        assert_eq!(sent, vec!["send vote to [ReplicaId(3)]"]);
        exec.synced(2, &mut Net(&mut sent));
        assert_eq!(exec.take_loopback().len(), 1);
    }

    #[test]
    fn with_a_synchronous_disk_everything_leaves_in_the_same_call() {
        let mut storage = Recorder::default();
        let mut sent = Vec::new();
        let mut exec = Executor::new(ReplicaId(1));
        let mut outputs = vec![
            Output::Send { to: vec![ReplicaId(2)], env: env(vote()) },
            Output::Persist(Persist::Promise { epoch: Epoch(4), leader: None }),
            Output::Send { to: vec![ReplicaId(2)], env: env(vote()) },
        ];
        exec.execute(&mut outputs, &mut storage, &mut Net(&mut sent)).unwrap();
        assert_eq!(storage.events.last().map(String::as_str), Some("sync"));
        assert_eq!(sent.len(), 2);
        assert!(outputs.is_empty());
    }

    #[test]
    fn a_commit_index_alone_needs_no_sync() {
        let mut outputs = vec![
            Output::Persist(Persist::Commit(LogIndex(3))),
            Output::Reply { req: ReqId(1), reply: Reply::NotFound },
        ];
        let mut storage = Recorder::default();
        let mut sent = Vec::new();
        let done = Executor::new(ReplicaId(1))
            .execute(&mut outputs, &mut storage, &mut Net(&mut sent))
            .unwrap();
        assert_eq!(done.syncs, 0);
    }
}
