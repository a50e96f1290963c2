//! Simulated clients and their history (DESIGN §7): closed-loop clients send
//! PUT, GET and DEL on a few keys to random replicas, with unique values, and
//! every call and return is recorded in one global order for the
//! linearizability checker.
//!
//! Outcomes: `OK`, `VALUE`, `NOTFOUND` are definite. `ERR TIMEOUT`, or no reply
//! because the replica crashed, leaves a write's outcome unknown (it may take
//! effect at any point after its call, or never). `ERR NOQUORUM` and
//! `ERR NOLEADER` are definite failures: such a write must never be applied.
//! A read that fails constrains nothing and is left out.

use super::cluster::{ClientEvent, SimCluster};
use super::linear::{self, Op, OpKind, Verdict};
use crate::client::{ClientError, Reply, Request};
use crate::protocol::types::{Command, LogIndex, Millis, ReplicaId, ReqId};
use rand::rngs::StdRng;
use rand::RngExt;
use std::collections::{BTreeMap, BTreeSet};

/// What a client asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Put(linear::Value),
    Del,
    Get,
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No answer yet.
    Pending,
    /// A write was acknowledged at this version (its log index).
    Written(u64),
    /// A read returned this value (None = NOTFOUND).
    Read(Option<linear::Value>),
    /// Unknown: `ERR TIMEOUT`, or the replica crashed first.
    Unknown,
    /// A definite failure (`NOQUORUM`, `NOLEADER`), or any failed read.
    Failed(String),
}

/// One request in the history.
#[derive(Clone, Debug)]
pub struct Record {
    pub client: usize,
    pub key: usize,
    pub replica: ReplicaId,
    pub call: Call,
    pub call_seq: u64,
    pub call_ms: Millis,
    pub ret_seq: Option<u64>,
    pub ret_ms: Option<Millis>,
    pub outcome: Outcome,
}

/// All clients of one run and everything they saw.
pub struct Clients {
    keys: usize,
    /// Per client: when it may send next, and its request in flight.
    next_at: Vec<Millis>,
    busy: Vec<Option<usize>>,
    think_ms_max: u64,
    next_value: linear::Value,
    pub history: Vec<Record>,
    by_req: BTreeMap<ReqId, usize>,
}

/// The key name for key number `k`.
pub fn key_name(k: usize) -> String {
    format!("k{k}")
}

fn value_text(v: linear::Value) -> Vec<u8> {
    format!("v{v}").into_bytes()
}

fn parse_value(b: &[u8]) -> Option<linear::Value> {
    std::str::from_utf8(b).ok()?.strip_prefix('v')?.parse().ok()
}

impl Clients {
    /// `count` clients over `keys` keys; each waits up to `think_ms_max` between requests.
    pub fn new(count: usize, keys: usize, think_ms_max: u64) -> Clients {
        Clients {
            keys,
            next_at: vec![Millis(0); count],
            busy: vec![None; count],
            think_ms_max,
            next_value: 1,
            history: Vec::new(),
            by_req: BTreeMap::new(),
        }
    }

    /// Requests sent and not answered.
    pub fn pending(&self) -> usize {
        self.busy.iter().filter(|b| b.is_some()).count()
    }

    /// Every idle client whose think time is over sends its next request.
    pub fn issue(&mut self, cluster: &mut SimCluster, rng: &mut StdRng) {
        let now = cluster.now;
        let up: Vec<ReplicaId> =
            cluster.ids().into_iter().filter(|id| cluster.is_up(*id)).collect();
        if up.is_empty() {
            return;
        }
        for c in 0..self.busy.len() {
            if self.busy[c].is_some() || self.next_at[c] > now {
                continue;
            }
            let key = rng.random_range(0..self.keys);
            let replica = up[rng.random_range(0..up.len())];
            let roll = rng.random_range(0..100u32);
            let call = if roll < 45 {
                let v = self.next_value;
                self.next_value += 1;
                Call::Put(v)
            } else if roll < 60 {
                Call::Del
            } else {
                Call::Get
            };
            self.send(cluster, c, key, replica, call);
        }
    }

    /// Sends one request for client `c`. False when the replica is down.
    pub fn send(
        &mut self,
        cluster: &mut SimCluster,
        c: usize,
        key: usize,
        replica: ReplicaId,
        call: Call,
    ) -> bool {
        let request = match call {
            Call::Put(v) => Request::Put { key: key_name(key), value: value_text(v) },
            Call::Del => Request::Del { key: key_name(key) },
            Call::Get => Request::Get { key: key_name(key) },
        };
        let now = cluster.now;
        let Some((req, seq)) = cluster.client_request(replica, request) else { return false };
        self.history.push(Record {
            client: c,
            key,
            replica,
            call,
            call_seq: seq,
            call_ms: now,
            ret_seq: None,
            ret_ms: None,
            outcome: Outcome::Pending,
        });
        let index = self.history.len() - 1;
        // The request may have been answered inside `client_request`.
        self.by_req.insert(req, index);
        self.busy[c] = Some(index);
        true
    }

    /// Takes the cluster's client events. Err on a reply no client can get
    /// (a value never written, a reply kind that does not fit the request).
    pub fn absorb(&mut self, cluster: &mut SimCluster, rng: &mut StdRng) -> Result<(), String> {
        for ev in cluster.take_events() {
            let (req, at, seq, reply) = match ev {
                ClientEvent::Reply { req, at, seq, reply } => (req, at, seq, Some(reply)),
                ClientEvent::Lost { req, at, seq } => (req, at, seq, None),
            };
            let Some(index) = self.by_req.remove(&req) else {
                return Err(format!("a reply for request #{} that no client sent", req.0));
            };
            let outcome = outcome(self.history[index].call, reply)?;
            let rec = &mut self.history[index];
            rec.outcome = outcome;
            if rec.outcome != Outcome::Unknown {
                rec.ret_seq = Some(seq);
                rec.ret_ms = Some(at);
            }
            let c = rec.client;
            self.busy[c] = None;
            self.next_at[c] = at.plus(rng.random_range(0..=self.think_ms_max));
        }
        Ok(())
    }

    /// Settles unknown outcomes with the committed log at the end of the run
    /// (after the final reads, so nothing still to commit can change what any
    /// read saw): an unknown PUT whose unique value no committed slot holds
    /// never took effect; when a key's committed DELs are all acknowledged
    /// ones, none of its unknown DELs took effect. This keeps the
    /// linearizability search small when many writes time out.
    pub fn settle_unknowns(&mut self, log: &BTreeMap<LogIndex, Command>) {
        let committed: BTreeSet<linear::Value> = log
            .values()
            .filter_map(|c| match c {
                Command::Put(kv) => parse_value(kv.value()),
                _ => None,
            })
            .collect();
        let mut dels: BTreeMap<String, usize> = BTreeMap::new();
        for c in log.values() {
            if let Command::Del { key } = c {
                *dels.entry(key.clone()).or_default() += 1;
            }
        }
        for r in &self.history {
            if r.call == Call::Del && matches!(r.outcome, Outcome::Written(_)) {
                let n = dels.entry(key_name(r.key)).or_default();
                *n = n.saturating_sub(1);
            }
        }
        for r in &mut self.history {
            if r.outcome != Outcome::Unknown {
                continue;
            }
            let never = match r.call {
                Call::Put(v) => !committed.contains(&v),
                Call::Del => dels.get(&key_name(r.key)).copied().unwrap_or(0) == 0,
                Call::Get => false,
            };
            if never {
                r.outcome = Outcome::Failed("unknown outcome; not in the committed log".into());
            }
        }
    }

    /// Checks the history against a register with delete, key by key.
    pub fn check_linearizable(&self) -> Result<(), String> {
        for key in 0..self.keys {
            let recs: Vec<&Record> = self.history.iter().filter(|r| r.key == key).collect();
            let ops: Vec<Op> = recs.iter().filter_map(|r| model_op(r)).collect();
            match linear::check(&ops) {
                Verdict::Linearizable => {}
                Verdict::GaveUp => {
                    return Err(format!(
                        "linearizability check of {} gave up after {} memo entries\n{}",
                        key_name(key),
                        linear::MEMO_ENTRIES_MAX,
                        describe(&recs)
                    ));
                }
                Verdict::Violation => {
                    return Err(format!(
                        "history of {} is not linearizable:\n{}",
                        key_name(key),
                        describe(&recs)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks the history against the committed log (`log`: slot -> command):
    /// every acknowledged write sits at the slot its version names, and no PUT
    /// that failed definitely was ever committed.
    pub fn check_against_log(&self, log: &BTreeMap<LogIndex, Command>) -> Result<(), String> {
        let committed: BTreeSet<linear::Value> = log
            .values()
            .filter_map(|c| match c {
                Command::Put(kv) => parse_value(kv.value()),
                _ => None,
            })
            .collect();
        for r in &self.history {
            let key = key_name(r.key);
            match (&r.outcome, r.call) {
                (Outcome::Written(version), call) => {
                    let held = log.get(&LogIndex(*version));
                    let fits = match (held, call) {
                        (Some(Command::Put(kv)), Call::Put(v)) => {
                            kv.key() == key && parse_value(kv.value()) == Some(v)
                        }
                        (Some(Command::Del { key: k }), Call::Del) => *k == key,
                        _ => false,
                    };
                    if !fits {
                        return Err(format!(
                            "acknowledged write lost: {} answered OK {version} (client {} via r{} \
                             at {}), but the committed slot {version} holds {held:?}",
                            call_text(r),
                            r.client,
                            r.replica,
                            r.call_ms
                        ));
                    }
                }
                (Outcome::Failed(code), Call::Put(v)) if committed.contains(&v) => {
                    return Err(format!(
                        "a write that failed with {code} was committed: {} (client {} via r{})",
                        call_text(r),
                        r.client,
                        r.replica
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// What a reply means for a request of kind `call`.
fn outcome(call: Call, reply: Option<Reply>) -> Result<Outcome, String> {
    let Some(reply) = reply else {
        return Ok(match call {
            Call::Get => Outcome::Failed("lost".into()),
            _ => Outcome::Unknown,
        });
    };
    Ok(match (call, reply) {
        (Call::Put(_) | Call::Del, Reply::Written(v)) => Outcome::Written(v),
        (Call::Get, Reply::Value(b)) => match parse_value(&b) {
            Some(v) => Outcome::Read(Some(v)),
            None => return Err(format!("GET returned a value never written: {b:?}")),
        },
        (Call::Get, Reply::NotFound) => Outcome::Read(None),
        (Call::Get, Reply::Error(e)) => Outcome::Failed(e.code().into()),
        (_, Reply::Error(ClientError::Timeout(_))) => Outcome::Unknown,
        (_, Reply::Error(e @ (ClientError::NoQuorum { .. } | ClientError::NoLeader(_)))) => {
            Outcome::Failed(e.code().into())
        }
        (call, reply) => return Err(format!("unexpected reply to {call:?}: {reply:?}")),
    })
}

/// The model's view of a record; None when it constrains nothing.
fn model_op(r: &Record) -> Option<Op> {
    let kind = match (r.call, &r.outcome) {
        (_, Outcome::Failed(_)) | (_, Outcome::Pending) => return None,
        (Call::Get, Outcome::Read(v)) => OpKind::Get(*v),
        (Call::Get, _) => return None,
        (Call::Put(v), _) => OpKind::Put(v),
        (Call::Del, _) => OpKind::Del,
    };
    Some(Op { call: r.call_seq, ret: r.ret_seq, kind })
}

fn call_text(r: &Record) -> String {
    match r.call {
        Call::Put(v) => format!("PUT {} v{v}", key_name(r.key)),
        Call::Del => format!("DEL {}", key_name(r.key)),
        Call::Get => format!("GET {}", key_name(r.key)),
    }
}

/// The history of one key, one request a line, in call order.
fn describe(recs: &[&Record]) -> String {
    let mut lines = Vec::new();
    for r in recs {
        let ret = match (r.ret_seq, r.ret_ms) {
            (Some(s), Some(t)) => format!("ret #{s} at {}", t),
            _ => "no return".into(),
        };
        lines.push(format!(
            "  call #{} at {} client {} via r{}: {} -> {:?} ({ret})",
            r.call_seq,
            r.call_ms,
            r.client,
            r.replica,
            call_text(r),
            r.outcome
        ));
    }
    lines.join("\n")
}
