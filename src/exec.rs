//! The output executor (DESIGN §1, §7): carries out a batch of protocol
//! outputs with the one ordering rule that makes the protocol durable —
//! every `Persist` is durable before any send or reply of the same batch.
//!
//! The server and the simulator both call [`execute`]; only the [`Storage`]
//! and [`Network`] behind it differ, so the simulator tests the real ordering.
//!
//! Sends and replies are held until the batch's one fsync is done: delaying a
//! message is always safe, and it turns many writes in flight into one fsync.

use crate::client::Reply;
use crate::protocol::message::Envelope;
use crate::protocol::types::{ReplicaId, ReqId};
use crate::protocol::Output;
use crate::storage::{self, Storage};

/// Where sends and replies go.
pub trait Network {
    /// Sends one envelope to each replica in `to`.
    fn send(&mut self, to: &[ReplicaId], env: &Envelope);
    /// Answers one client request.
    fn reply(&mut self, req: ReqId, reply: Reply);
}

/// What one `execute` call did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Executed {
    /// Persist ops written.
    pub persisted: usize,
    /// fsyncs issued (0 or 1).
    pub syncs: usize,
    /// Envelopes sent (counting each recipient).
    pub sent: usize,
    /// Client replies.
    pub replies: usize,
}

/// Carries out `outputs` (draining it): all persists in order, one sync if any
/// of them needs it, then every send and reply in order. A storage error is
/// returned at once and nothing after it is sent: the replica must stop.
pub fn execute(
    outputs: &mut Vec<Output>,
    storage: &mut dyn Storage,
    net: &mut dyn Network,
) -> storage::Result<Executed> {
    let mut done = Executed::default();
    let mut needs_sync = false;
    for output in outputs.iter() {
        if let Output::Persist(op) = output {
            storage.persist(op)?;
            needs_sync |= op.needs_sync();
            done.persisted += 1;
        }
    }
    if needs_sync {
        storage.sync()?;
        done.syncs = 1;
    }
    for output in outputs.drain(..) {
        match output {
            Output::Persist(_) => {}
            Output::Send { to, env } => {
                done.sent += to.len();
                net.send(&to, &env);
            }
            Output::Reply { req, reply } => {
                done.replies += 1;
                net.reply(req, reply);
            }
            Output::SaveSnapshot(snapshot) => storage.save_snapshot(snapshot)?,
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::durable::Persist;
    use crate::protocol::message::PeerMsg;
    use crate::protocol::types::{Epoch, Formation, Incarnation};

    /// Records every action in one shared order.
    #[derive(Default)]
    struct Recorder {
        events: Vec<String>,
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
        fn save_snapshot(
            &mut self,
            snapshot: std::sync::Arc<crate::protocol::durable::Snapshot>,
        ) -> storage::Result<()> {
            self.events.push(format!("snapshot {}", snapshot.index));
            Ok(())
        }
        fn snapshot_saved(&mut self) -> storage::Result<Option<crate::protocol::types::LogIndex>> {
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

    fn env() -> Envelope {
        Envelope {
            from: ReplicaId(1),
            incarnation: Incarnation::default(),
            epoch: Epoch(1),
            formation: Formation::Blank,
            learner: false,
            msg: PeerMsg::Hello,
        }
    }

    #[test]
    fn every_send_and_reply_waits_for_the_batch_sync() {
        let mut outputs = vec![
            Output::Send { to: vec![ReplicaId(2)], env: env() },
            Output::Persist(Persist::Promise { epoch: Epoch(4), leader: None }),
            Output::Reply { req: ReqId(9), reply: Reply::Written(1) },
            Output::Persist(Persist::Learner(false)),
        ];
        let mut storage = Recorder::default();
        let mut sent = Vec::new();
        let done = execute(&mut outputs, &mut storage, &mut Net(&mut sent)).unwrap();
        assert_eq!(done.syncs, 1);
        assert_eq!(storage.events.last().map(String::as_str), Some("sync"));
        assert_eq!(storage.events.len(), 3, "two persists then one sync");
        assert_eq!(sent, vec!["send hello to [ReplicaId(2)]", "reply 9"]);
        assert!(outputs.is_empty());
    }

    #[test]
    fn a_commit_index_alone_needs_no_sync() {
        let mut outputs = vec![
            Output::Persist(Persist::Commit(crate::protocol::types::LogIndex(3))),
            Output::Reply { req: ReqId(1), reply: Reply::NotFound },
        ];
        let mut storage = Recorder::default();
        let mut sent = Vec::new();
        let done = execute(&mut outputs, &mut storage, &mut Net(&mut sent)).unwrap();
        assert_eq!(done.syncs, 0);
    }
}
