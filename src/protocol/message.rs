//! Peer messages (DESIGN §3–§6). Every message travels in an [`Envelope`] that
//! names the sender's id, incarnation, epoch and formation state, so a receiver
//! can drop messages from an old incarnation and notice a higher epoch at once.

use super::types::{Entry, EntryId, Epoch, Formation, Incarnation, LogIndex, ReplicaId, ReqId};
use crate::client::{Reply, Request};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The header every peer message carries, and the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender.
    pub from: ReplicaId,
    /// The sender's data-directory incarnation.
    pub incarnation: Incarnation,
    /// The sender's promised epoch.
    pub epoch: Epoch,
    /// The sender's formation state (DESIGN §6: every message carries it).
    pub formation: Formation,
    /// True while the sender is a learner (it does not vote, promise or count).
    pub learner: bool,
    /// The message itself.
    pub msg: PeerMsg,
}

/// A replica's answer to one read-quorum request (DESIGN §5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadAnswer {
    /// Log index of the PUT/CAS that last wrote the key; 0 when absent.
    pub version: u64,
    /// The applied value (empty when absent).
    #[serde(with = "super::types::value_bytes")]
    pub value: Vec<u8>,
    /// True when the replica holds an entry for the key above its applied index.
    pub pending: bool,
}

/// The forwarded write an ACCEPT'd entry came from: the forwarding replica,
/// its boot and its request id (as in [`PeerMsg::Forward`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardTag {
    /// The slot the write was proposed at.
    pub index: LogIndex,
    pub from: ReplicaId,
    pub boot: u64,
    pub req: ReqId,
}

/// One key of a snapshot chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotItem {
    pub key: String,
    /// The key's version (the index of the write that set it).
    pub version: u64,
    #[serde(with = "super::types::value_bytes")]
    pub value: Vec<u8>,
}

/// Every message one replica sends another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Sent when a link comes up: the envelope alone tells the peer our state.
    Hello,
    /// Bully: a candidate asks every higher id whether it is alive.
    Election,
    /// Bully: "I outrank you and I am alive" (never called a vote).
    Alive,
    /// The Bully winner claims `epoch`; `commit` is its own commit index, so
    /// promisers send the committed entries it lacks.
    Coordinator { epoch: Epoch, commit: LogIndex },
    /// A durable promise not to accept anything below `epoch`, with what the
    /// promiser holds: every entry above the winner's commit index, and its own
    /// commit index (entries at or below it are chosen). `truncated` is true when
    /// the committed part was cut short; the winner fetches the rest.
    Promise {
        epoch: Epoch,
        commit: LogIndex,
        entries: Vec<(LogIndex, Entry)>,
        truncated: bool,
        incarnations: BTreeMap<ReplicaId, Incarnation>,
    },
    /// "I promised `promised`, which is above the `epoch` you asked for."
    Refuse { epoch: Epoch, promised: Epoch },
    /// The leader of `epoch` asks replicas to accept `entries` (a batch).
    /// `commit` piggybacks its commit index when recovery is over.
    /// `forwards` names the entries that are forwarded writes, so the
    /// follower that forwarded one can answer its client itself.
    Accept {
        epoch: Epoch,
        entries: Vec<(LogIndex, Entry)>,
        commit: Option<LogIndex>,
        forwards: Vec<ForwardTag>,
    },
    /// The answer to an Accept: the slots stored durably (`accepted`), or a
    /// refusal naming the promised epoch (`accepted` empty, `promised > epoch`).
    /// A vote goes to the leader; with NW = 2 the leader's own vote also goes
    /// to every follower, and a follower's to itself, so a follower can tally
    /// them as the leader does. A refusal goes to the leader only.
    Vote { epoch: Epoch, accepted: Vec<LogIndex>, promised: Epoch },
    /// The leader of `epoch` committed these slots, each with its entry id.
    Commit { epoch: Epoch, slots: Vec<(LogIndex, EntryId)> },
    /// Leader liveness. `progress` = (commit index, last index), only after recovery.
    Heartbeat { epoch: Epoch, seq: u64, progress: Option<(LogIndex, LogIndex)> },
    /// A follower's answer to a heartbeat at the leader's epoch.
    HeartbeatAck { epoch: Epoch, seq: u64, commit: LogIndex },
    /// A follower passes a client write (or a read-index read) to the leader of `epoch`.
    /// `boot` is random per process start of the follower, so a restarted
    /// follower's request ids never collide with its earlier ones.
    Forward { req: ReqId, boot: u64, epoch: Epoch, request: Request },
    /// The leader's answer to a Forward.
    /// `boot` echoes the forward's: a restarted follower numbers its forwards
    /// from 1 again and must not take an answer meant for its previous process.
    ForwardReply { req: ReqId, boot: u64, reply: Reply },
    /// Read quorum: "what do you hold for `key`?" `boot` is the asker's, as
    /// in Forward: read ids restart at 1 in every process.
    ReadReq { read: u64, boot: u64, key: String },
    /// Read quorum answer; `None` from a learner (its answer does not count).
    /// `boot` echoes the request's, so a restarted replica never takes an
    /// answer to its previous process's read (another key) for its own.
    ReadResp { read: u64, boot: u64, answer: Option<ReadAnswer> },
    /// Catch-up: "send me committed entries from `from` on".
    FetchReq { from: LogIndex },
    /// Committed entries in order from the requested index, and the sender's
    /// commit index. Empty when the sender has nothing past `from`.
    FetchResp { entries: Vec<(LogIndex, Entry)>, commit: LogIndex },
    /// Catch-up by snapshot: keys of the snapshot at `index` after key `after`
    /// (from the first key when None); `done` on the last chunk.
    SnapshotChunk { index: LogIndex, after: Option<String>, items: Vec<SnapshotItem>, done: bool },
    /// The receiver asks for the chunk after `after` of snapshot `index`
    /// (index 0: start a new transfer).
    SnapshotReq { index: LogIndex, after: Option<String> },
    /// A learner asks what every replica records for its id (answered from any
    /// incarnation, so a wiped replica learns the counter to beat).
    Join,
    /// A full member's answer to Join: its whole incarnation table. The
    /// learner's own entry is the counter to beat; the learner merges the
    /// rest, so a replica whose table was wiped with its disk learns again
    /// what a majority records.
    JoinInfo { incarnations: BTreeMap<ReplicaId, Incarnation> },
    /// A learner asks every replica to record its new incarnation (in the envelope).
    Register,
    /// Recorded durably: `incarnation` is the learner incarnation this
    /// confirms (a late answer for an earlier one must not count),
    /// `promised` the member's promised epoch, `incarnations` its whole table.
    Registered {
        incarnation: Incarnation,
        promised: Epoch,
        incarnations: BTreeMap<ReplicaId, Incarnation>,
    },
    /// "What I record for your id beats your incarnation, so I drop your
    /// messages": `recorded` has the same counter with another nonce, or a
    /// higher one. The answer to a Register that cannot be recorded, and (at
    /// most once per heartbeat interval) to any other message dropped as
    /// stale. The receiver picks a counter above `recorded` and registers it;
    /// a late message from a wiped directory draws a notice that the current
    /// directory of that id, whose counter is higher, ignores.
    Superseded { recorded: Incarnation },
    /// Formation: the highest id proposes the cluster id and every incarnation.
    Form { cluster_id: u64, incarnations: BTreeMap<ReplicaId, Incarnation> },
    /// Formation: recorded durably.
    FormAck { cluster_id: u64 },
    /// Formation: all N acknowledged; the cluster is formed.
    Formed { cluster_id: u64 },
}

impl PeerMsg {
    /// A short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            PeerMsg::Hello => "hello",
            PeerMsg::Election => "election",
            PeerMsg::Alive => "alive",
            PeerMsg::Coordinator { .. } => "coordinator",
            PeerMsg::Promise { .. } => "promise",
            PeerMsg::Refuse { .. } => "refuse",
            PeerMsg::Accept { .. } => "accept",
            PeerMsg::Vote { .. } => "vote",
            PeerMsg::Commit { .. } => "commit",
            PeerMsg::Heartbeat { .. } => "heartbeat",
            PeerMsg::HeartbeatAck { .. } => "heartbeat_ack",
            PeerMsg::Forward { .. } => "forward",
            PeerMsg::ForwardReply { .. } => "forward_reply",
            PeerMsg::ReadReq { .. } => "read_req",
            PeerMsg::ReadResp { .. } => "read_resp",
            PeerMsg::FetchReq { .. } => "fetch_req",
            PeerMsg::FetchResp { .. } => "fetch_resp",
            PeerMsg::SnapshotChunk { .. } => "snapshot_chunk",
            PeerMsg::SnapshotReq { .. } => "snapshot_req",
            PeerMsg::Join => "join",
            PeerMsg::JoinInfo { .. } => "join_info",
            PeerMsg::Register => "register",
            PeerMsg::Registered { .. } => "registered",
            PeerMsg::Superseded { .. } => "superseded",
            PeerMsg::Form { .. } => "form",
            PeerMsg::FormAck { .. } => "form_ack",
            PeerMsg::Formed { .. } => "formed",
        }
    }
}
