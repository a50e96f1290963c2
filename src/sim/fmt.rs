//! One-line text forms of messages, entries, persist ops, inputs and replies,
//! shared by the seed trace and the golden scripts so both read the same way.
//!
//! Incarnation nonces are left out (only counters are shown) so golden output
//! does not churn with the random draws behind them.

use crate::client::{Reply, Request};
use crate::protocol::durable::Persist;
use crate::protocol::message::PeerMsg;
use crate::protocol::types::{Command, Entry, Formation, Incarnation, LogIndex, ReplicaId};
use crate::protocol::Input;
use std::collections::BTreeMap;

/// Entries shown in one message before the rest is summarised as `+n`.
const ENTRIES_SHOWN_MAX: usize = 4;

/// `put k=v`, `del k`, `cas k@3=v`, `noop`.
pub fn command(c: &Command) -> String {
    match c {
        Command::Noop => "noop".into(),
        Command::Put(kv) => format!("put {}={}", kv.key(), bytes(kv.value())),
        Command::Del { key } => format!("del {key}"),
        Command::Cas { expected, kv } => {
            format!("cas {}@{expected}={}", kv.key(), bytes(kv.value()))
        }
    }
}

/// `5:3.4/b6 put k=v`: slot, entry id, ballot, command.
pub fn entry(index: LogIndex, e: &Entry) -> String {
    format!("{index}:{}/b{} {}", e.id, e.ballot, command(&e.command))
}

/// A bracketed list of entries, the first few in full.
pub fn entries(list: &[(LogIndex, Entry)]) -> String {
    let mut parts: Vec<String> =
        list.iter().take(ENTRIES_SHOWN_MAX).map(|(i, e)| entry(*i, e)).collect();
    if list.len() > ENTRIES_SHOWN_MAX {
        parts.push(format!("+{}", list.len() - ENTRIES_SHOWN_MAX));
    }
    format!("[{}]", parts.join(", "))
}

fn indexes(list: &[LogIndex]) -> String {
    let parts: Vec<String> = list.iter().map(|i| i.to_string()).collect();
    format!("[{}]", parts.join(","))
}

/// Lossy text of a value.
pub fn bytes(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A peer message without its envelope.
pub fn msg(m: &PeerMsg) -> String {
    match m {
        PeerMsg::Hello => "hello".into(),
        PeerMsg::Election => "election".into(),
        PeerMsg::Alive => "alive".into(),
        PeerMsg::Coordinator { epoch, commit } => format!("coordinator e={epoch} commit={commit}"),
        PeerMsg::Promise { epoch, commit, entries: list, truncated, .. } => format!(
            "promise e={epoch} commit={commit} {}{}",
            entries(list),
            if *truncated { " truncated" } else { "" }
        ),
        PeerMsg::Refuse { epoch, promised } => format!("refuse e={epoch} promised={promised}"),
        PeerMsg::Accept { epoch, entries: list, commit, forwards } => {
            let c = commit.map(|c| format!(" commit={c}")).unwrap_or_default();
            let f: String = forwards
                .iter()
                .map(|t| format!(" fwd={}:r{}#{}", t.index, t.from, t.req.0))
                .collect();
            format!("accept e={epoch}{c} {}{f}", entries(list))
        }
        PeerMsg::Vote { epoch, accepted, promised } => {
            format!("vote e={epoch} accepted={} promised={promised}", indexes(accepted))
        }
        PeerMsg::Commit { epoch, slots } => {
            let parts: Vec<String> = slots.iter().map(|(i, id)| format!("{i}:{id}")).collect();
            format!("commit e={epoch} [{}]", parts.join(","))
        }
        PeerMsg::Heartbeat { epoch, seq, progress } => match progress {
            Some((c, last)) => format!("heartbeat e={epoch} seq={seq} commit={c} last={last}"),
            None => format!("heartbeat e={epoch} seq={seq} recovering"),
        },
        PeerMsg::HeartbeatAck { epoch, seq, commit } => {
            format!("heartbeat_ack e={epoch} seq={seq} commit={commit}")
        }
        PeerMsg::Forward { req, epoch, request, .. } => {
            format!("forward #{} e={epoch} {}", req.0, self::request(request))
        }
        PeerMsg::ForwardReply { req, reply, .. } => {
            format!("forward_reply #{} {}", req.0, self::reply(reply))
        }
        PeerMsg::ReadReq { read, key, .. } => format!("read_req #{read} {key}"),
        PeerMsg::ReadResp { read, answer, .. } => match answer {
            Some(a) => format!(
                "read_resp #{read} v={} {}{}",
                a.version,
                bytes(&a.value),
                if a.pending { " pending" } else { "" }
            ),
            None => format!("read_resp #{read} learner"),
        },
        PeerMsg::FetchReq { from } => format!("fetch_req from={from}"),
        PeerMsg::FetchResp { entries: list, commit } => {
            format!("fetch_resp commit={commit} {}", entries(list))
        }
        PeerMsg::SnapshotChunk { index, after, items, done } => format!(
            "snapshot_chunk at={index} after={} keys={}{}",
            after.as_deref().unwrap_or("-"),
            items.len(),
            if *done { " done" } else { "" }
        ),
        PeerMsg::SnapshotReq { index, after } => {
            format!("snapshot_req at={index} after={}", after.as_deref().unwrap_or("-"))
        }
        PeerMsg::Join => "join".into(),
        PeerMsg::JoinInfo { incarnations } => format!("join_info {}", table(incarnations)),
        PeerMsg::Register => "register".into(),
        PeerMsg::Registered { incarnation, promised, incarnations } => format!(
            "registered inc={} promised={promised} {}",
            incarnation.counter,
            table(incarnations)
        ),
        PeerMsg::Superseded { recorded } => format!("superseded recorded={}", recorded.counter),
        PeerMsg::Form { cluster_id, .. } => format!("form {cluster_id:x}"),
        PeerMsg::FormAck { cluster_id } => format!("form_ack {cluster_id:x}"),
        PeerMsg::Formed { cluster_id } => format!("formed {cluster_id:x}"),
    }
}

/// A client request as a command line.
pub fn request(r: &Request) -> String {
    match r {
        Request::Put { key, value } => format!("PUT {key} {}", bytes(value)),
        Request::Get { key } => format!("GET {key}"),
        Request::GetV { key } => format!("GETV {key}"),
        Request::Del { key } => format!("DEL {key}"),
        Request::Cas { key, version, value } => format!("CAS {key} {version} {}", bytes(value)),
        Request::Dump => "DUMP".into(),
        Request::Status => "STATUS".into(),
        Request::Metrics => "METRICS".into(),
        Request::Help => "HELP".into(),
        Request::Quit => "QUIT".into(),
    }
}

/// A reply as the client sees it, without the newline.
pub fn reply(r: &Reply) -> String {
    let mut out = Vec::new();
    r.encode(&mut out);
    out.pop();
    bytes(&out)
}

/// A persist op.
pub fn persist(p: &Persist) -> String {
    match p {
        Persist::Incarnation(inc) => format!("incarnation {}", inc.counter),
        Persist::Promise { epoch, leader } => match leader {
            Some(l) => format!("promise e={epoch} leader-inc={}", l.counter),
            None => format!("promise e={epoch}"),
        },
        Persist::Accept(list) => format!("accept {}", entries(list)),
        Persist::Drop(list) => format!("drop {}", indexes(list)),
        Persist::Commit(c) => format!("commit {c}"),
        Persist::Incarnations(t) => format!("incarnations {}", table(t)),
        Persist::Formation(f) => format!("formation {}", formation(*f)),
        Persist::Learner(l) => format!("learner {l}"),
        Persist::Checkpoint(c) => format!(
            "checkpoint snapshot={} promise={} commit={} log={} entries",
            c.snapshot_index,
            c.promise,
            c.commit,
            c.log.len()
        ),
    }
}

/// `blank`, `pending:<id>`, `complete:<id>`.
pub fn formation(f: Formation) -> String {
    match f {
        Formation::Blank => "blank".into(),
        Formation::Pending(id) => format!("pending:{id:x}"),
        Formation::Complete(id) => format!("complete:{id:x}"),
    }
}

/// An input, as the header of a trace step.
pub fn input(i: &Input) -> String {
    match i {
        Input::Tick => "tick".into(),
        Input::Peer(env) => format!("<- r{} {}", env.from, msg(&env.msg)),
        Input::Client { req, request: r } => format!("<- client #{} {}", req.0, request(r)),
        Input::LinkUp(id) => format!("link up {id}"),
        Input::LinkDown(id) => format!("link down {id}"),
        Input::SnapshotSaved(index) => format!("snapshot {index} saved"),
    }
}

/// `1,2,3`.
pub fn ids(list: &[ReplicaId]) -> String {
    let parts: Vec<String> = list.iter().map(|id| id.to_string()).collect();
    parts.join(",")
}

/// An incarnation table as `[id:counter,…]`.
fn table(t: &BTreeMap<ReplicaId, Incarnation>) -> String {
    let parts: Vec<String> = t.iter().map(|(id, i)| format!("{id}:{}", i.counter)).collect();
    format!("[{}]", parts.join(","))
}
