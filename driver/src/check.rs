//! A linearizability checker for a history of operations on a key-value
//! store whose keys are independent registers (DESIGN §7: "checks the client
//! history for linearizability and for lost acknowledged writes").
//!
//! The history type here is deliberately plain ([`Event`]: key, operation,
//! call and return times, outcome), so the driver's nemesis and an in-process
//! simulator can both feed it. It knows nothing about sockets or processes.
//!
//! # The model
//! Each key is a register, checked on its own (linearizability is local, so a
//! history is linearizable iff every key's sub-history is). The register is
//! absent (version 0) or holds the value of one write:
//! - `PUT v` sets it to `v`; `DEL` makes it absent; `CAS e v` sets it to `v`
//!   when its current version is `e` and otherwise answers `CONFLICT <current>`
//!   without effect (a conflict is a read of the version);
//! - `GET` returns the value or NOTFOUND; `GETV` also the version.
//!
//! Versions are the server's log indices: each names at most one write, and
//! they grow along the log, so a write acknowledged before another was called
//! has the lower one ([`log_order_violations`] checks both across keys; the
//! search relies on the order only to place anonymous writes, below). A
//! write's version is known from its own `OK <version>` or, for a write with
//! an unknown outcome, from a GETV that returned its value. A write whose
//! version is never seen matches a version only "maybe" (when no known write
//! owns that version).
//!
//! Every written value must be unique per key (the nemesis makes them so);
//! a history that writes one value twice is rejected as invalid. Uniqueness
//! is what lets a read name the write it observed.
//!
//! # Outcomes
//! - `Ok`: the operation took effect once, between its call and its return.
//! - `Fail`: it definitely took no effect (`ERR NOQUORUM`, `ERR NOLEADER`); a
//!   read that observes a failed write's value is a violation.
//! - `Unknown`: a timeout or a dropped connection: a write may take effect at
//!   any time after its call, or never. A read with an unknown outcome tells
//!   nothing and is ignored.
//!
//! # The search
//! Wing & Gong's search with Lowe's memoization, in the linked-list form
//! Porcupine uses: walk the call/return events in time order; at a call, try
//! to linearize that operation next (apply it to the model); at a return whose
//! operation is not linearized yet, backtrack. A (set of linearized
//! operations, register state) pair already explored is never explored again.
//! The set is kept as a 128-bit additive hash of per-operation random keys, so
//! the memo costs 16 bytes per entry (a false match needs a 128-bit collision).
//!
//! An operation with an unknown outcome is *optional*: the search may place
//! it, or drop it at the end of its window. Reductions keep them cheap:
//! - An unknown write whose value (or version) some successful operation
//!   observed must have taken effect, and before the earliest such
//!   observation returned: it becomes a definite operation with that return.
//! - An unknown PUT or CAS nobody observed is dropped: never taking effect is
//!   always allowed and no read depends on its value. The one thing it could
//!   explain is a version no known write owns (a CONFLICT naming it, say); for
//!   each such version an anonymous optional write of that version stands in,
//!   placed between the writes of the neighbouring known versions.
//! - An unknown DEL matters only while something may still observe absence:
//!   its window ends with the last such observation. All of them share that
//!   window and one memo key, since any two are interchangeable.
//! - Placing an optional operation that does not change the register is never
//!   better than keeping it for later, so the search does not try it.
//!
//! Precision limits, each erring towards accepting: a version owned by no
//! known write is matched "maybe" by any write of unseen version, and one
//! unobserved write may stand in for two such versions.
//!
//! The search is bounded by [`Options::steps_max`]; past it the verdict is
//! [`Verdict::Inconclusive`], never a silent pass.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

/// One operation on the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `PUT key value`.
    Put {
        /// The value written; unique per key within a history.
        value: String,
    },
    /// `DEL key`.
    Del,
    /// `GET key`.
    Get,
    /// `GETV key`.
    GetV,
    /// `CAS key expected value`.
    Cas {
        /// The version the key must have (0: absent).
        expected: u64,
        /// The value written on success; unique per key within a history.
        value: String,
    },
}

/// What a successful operation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ret {
    /// `OK <n>` to PUT, DEL or CAS: the log index of the write.
    Written(u64),
    /// GET: `VALUE <v>` or `NOTFOUND` (`None`).
    Value(Option<String>),
    /// GETV: `VERSION <version> <v>` or `NOTFOUND` (`None`).
    Versioned(Option<(u64, String)>),
    /// CAS: `ERR CONFLICT <current>`, the version the key had.
    Conflict(u64),
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A definite answer.
    Ok(Ret),
    /// Definitely took no effect.
    Fail,
    /// May have taken effect at any time after its call, or never.
    Unknown,
}

/// One operation in a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Unique within the history; used in explanations.
    pub id: u64,
    /// Which client (thread) issued it; one client's operations do not overlap.
    pub client: u64,
    /// The key.
    pub key: String,
    /// The operation.
    pub op: Op,
    /// When it was sent, in µs since the history began.
    pub call_us: u64,
    /// When the answer came (or the client gave up, for `Unknown`), in µs;
    /// `>= call_us`. The checker ignores it for `Unknown` outcomes.
    pub ret_us: u64,
    /// How it ended.
    pub outcome: Outcome,
}

impl Event {
    /// The value this operation writes: `Some(Some(v))` for PUT/CAS,
    /// `Some(None)` for DEL, `None` for reads.
    fn written(&self) -> Option<Option<&str>> {
        match &self.op {
            Op::Put { value } | Op::Cas { value, .. } => Some(Some(value)),
            Op::Del => Some(None),
            Op::Get | Op::GetV => None,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match &self.op {
            Op::Put { value } => format!("PUT {} {value:?}", self.key),
            Op::Del => format!("DEL {}", self.key),
            Op::Get => format!("GET {}", self.key),
            Op::GetV => format!("GETV {}", self.key),
            Op::Cas { expected, value } => format!("CAS {} {expected} {value:?}", self.key),
        };
        let outcome = match &self.outcome {
            Outcome::Ok(Ret::Written(v)) => format!("OK {v}"),
            Outcome::Ok(Ret::Value(None) | Ret::Versioned(None)) => "NOTFOUND".to_string(),
            Outcome::Ok(Ret::Value(Some(v))) => format!("VALUE {v:?}"),
            Outcome::Ok(Ret::Versioned(Some((n, v)))) => format!("VERSION {n} {v:?}"),
            Outcome::Ok(Ret::Conflict(c)) => format!("CONFLICT {c}"),
            Outcome::Fail => "failed".to_string(),
            Outcome::Unknown => "unknown".to_string(),
        };
        let ms = |us: u64| us as f64 / 1000.0;
        if self.outcome == Outcome::Unknown {
            write!(
                f,
                "op#{} c{} {op} -> {outcome} [{:.1}ms, ?)",
                self.id,
                self.client,
                ms(self.call_us)
            )
        } else {
            write!(
                f,
                "op#{} c{} {op} -> {outcome} [{:.1}ms, {:.1}ms]",
                self.id,
                self.client,
                ms(self.call_us),
                ms(self.ret_us)
            )
        }
    }
}

/// Search limits.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Most search steps per key before giving up as inconclusive.
    pub steps_max: u64,
}

impl Default for Options {
    fn default() -> Self {
        // About a few seconds of search per key: far more than a history
        // with bounded concurrency needs.
        Options { steps_max: 20_000_000 }
    }
}

/// The result for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// No linearization exists; the text explains where the search got stuck.
    Violation(String),
    /// The history is malformed (e.g. a value written twice); says why.
    Invalid(String),
    /// The step budget ran out; says how far the search got.
    Inconclusive(String),
}

/// One key's check.
#[derive(Clone, Debug)]
pub struct KeyReport {
    /// The key.
    pub key: String,
    /// Operations in its history (all outcomes).
    pub ops: usize,
    /// Operations the search had to place (after the reductions).
    pub searched: usize,
    /// Search steps taken.
    pub steps: u64,
    /// The verdict.
    pub verdict: Verdict,
}

/// Checks every key of `events` on its own; one report per key, in key order.
pub fn check(events: &[Event], opts: Options) -> Vec<KeyReport> {
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events {
        by_key.entry(e.key.as_str()).or_default().push(e);
    }
    by_key.into_iter().map(|(key, evs)| check_key(key, &evs, opts)).collect()
}

/// Checks one key's history (`events` all have key `key`).
pub fn check_key(key: &str, events: &[&Event], opts: Options) -> KeyReport {
    let mut report = KeyReport {
        key: key.to_string(),
        ops: events.len(),
        searched: 0,
        steps: 0,
        verdict: Verdict::Linearizable,
    };
    let model = match Model::build(events) {
        Ok(m) => m,
        Err(verdict) => {
            report.verdict = verdict;
            return report;
        }
    };
    report.searched = model.ops.len();
    let (verdict, steps) = search(&model, events, opts);
    report.verdict = verdict;
    report.steps = steps;
    report
}

/// Checks that span keys. Versions and DEL indices are log indices of one
/// log, so across the whole history no two acknowledged writes share one, and
/// a write acknowledged before another was called has the lower index.
/// Returns one line per violation.
pub fn log_order_violations(events: &[Event]) -> Vec<String> {
    let mut out = Vec::new();
    let mut owner: BTreeMap<u64, &Event> = BTreeMap::new();
    for e in events {
        if let (Some(_), Outcome::Ok(Ret::Written(v))) = (e.written(), &e.outcome) {
            if let Some(other) = owner.insert(*v, e) {
                out.push(format!("two acknowledged writes got log index {v}: {other} and {e}"));
            }
        }
    }
    let all: Vec<&Event> = events.iter().collect();
    if let Err(Verdict::Violation(why)) = check_version_order(&all) {
        out.push(why);
    }
    out
}

/// Lost acknowledged writes: for each key in `finals` (its value in the final
/// quiescent read, `None` = NOTFOUND), every write acknowledged with `OK`
/// whose effect differs from the final value must be followed by some other
/// write that did not definitely precede it (one with an `OK` or unknown
/// outcome whose return is not before the acknowledged write's call). Returns
/// one line per lost write. This is a necessary condition of
/// linearizability, checked on its own so a lost write gets a plain report.
pub fn lost_writes(events: &[Event], finals: &BTreeMap<String, Option<String>>) -> Vec<String> {
    let mut lost = Vec::new();
    for (key, final_value) in finals {
        let writes: Vec<&Event> = events
            .iter()
            .filter(|e| &e.key == key && e.written().is_some() && e.outcome != Outcome::Fail)
            .filter(|e| !matches!(e.outcome, Outcome::Ok(Ret::Conflict(_))))
            .collect();
        for w in writes.iter().filter(|w| matches!(w.outcome, Outcome::Ok(Ret::Written(_)))) {
            if w.written() == Some(final_value.as_deref()) {
                continue;
            }
            let followed = writes
                .iter()
                .any(|o| o.id != w.id && (o.outcome == Outcome::Unknown || o.ret_us >= w.call_us));
            if !followed {
                lost.push(format!(
                    "{w} was acknowledged, but the final read of {key} shows {} and no later write could have replaced it",
                    match final_value {
                        Some(v) => format!("{v:?}"),
                        None => "NOTFOUND".to_string(),
                    }
                ));
            }
        }
    }
    lost
}

/// The register state: 0 is absent; `s > 0` holds the value of write `s`.
type State = u32;

/// Whether a state's version equals a given version.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Match {
    Yes,
    No,
    Maybe,
}

/// An operation as the search sees it.
#[derive(Clone, Copy, Debug)]
enum ModelOp {
    /// PUT, or CAS on its success path (with the version it needs).
    Write { to: State, expected: Option<u64> },
    /// DEL.
    Delete,
    /// GET or GETV that observed state `want`.
    Read { want: State },
    /// CAS that conflicted: the version was not `expected` and was `current`.
    Conflict { expected: u64, current: u64 },
}

/// One operation to place.
#[derive(Clone, Copy, Debug)]
struct SearchOp {
    /// Index into the key's events.
    event: usize,
    /// What it does to the register.
    op: ModelOp,
    /// When it was called, in µs.
    call_us: u64,
    /// By when it must have taken effect (or, if `optional`, after which it
    /// can no longer matter), in µs.
    ret_us: u64,
    /// An unknown outcome: it may also never take effect.
    optional: bool,
    /// Memo class: operations of one class are interchangeable.
    class: usize,
}

/// The prepared history of one key.
struct Model {
    /// Operations to place.
    ops: Vec<SearchOp>,
    /// Version of each state (index 0: absent, version 0); `None` = unseen.
    versions: Vec<Option<u64>>,
    /// Every known version of a write on this key.
    known: BTreeSet<u64>,
    /// Number of memo classes (one per operation, plus one for unknown DELs).
    classes: usize,
}

/// What successful operations observed, for the unknown-outcome reductions.
struct Sightings {
    /// Per state: the earliest return of an operation that observed it.
    first_seen: Vec<u64>,
    /// The latest return of an operation that observed absence.
    absent_until: u64,
    /// Per version no known write owns: the earliest return naming it.
    unresolved: BTreeMap<u64, u64>,
}

impl Sightings {
    /// Collects every observation in `events`, including those of unknown
    /// CASes that must have succeeded (their value was observed).
    fn gather(
        events: &[&Event],
        state_of: &BTreeMap<&str, State>,
        observed: &[Option<State>],
        owner: &BTreeMap<u64, State>,
        states: usize,
    ) -> Sightings {
        let mut seen = Sightings {
            first_seen: vec![u64::MAX; states],
            absent_until: 0,
            unresolved: BTreeMap::new(),
        };
        for (i, e) in events.iter().enumerate() {
            let version_seen = match (&e.op, &e.outcome) {
                (Op::Cas { expected, .. }, Outcome::Ok(Ret::Written(_))) => Some(*expected),
                (Op::Cas { .. }, Outcome::Ok(Ret::Conflict(current))) => Some(*current),
                _ => None,
            };
            seen.see(owner, observed[i], version_seen, e.ret_us);
        }
        // A CAS with an unknown outcome whose value was observed succeeded,
        // so it observed its expected version too; that may reveal more.
        let mut changed = true;
        while changed {
            changed = false;
            for e in events.iter().filter(|e| e.outcome == Outcome::Unknown) {
                if let Op::Cas { expected, value } = &e.op {
                    let first = seen.first_seen[state_of[value.as_str()] as usize];
                    if first != u64::MAX {
                        changed |= seen.see(owner, None, Some(*expected), first.max(e.call_us));
                    }
                }
            }
        }
        seen
    }

    /// Records that an operation returning at `ret_us` saw `state` (or, if
    /// unknown, the state owning `version`). True if a state's earliest
    /// sighting moved earlier.
    fn see(
        &mut self,
        owner: &BTreeMap<u64, State>,
        state: Option<State>,
        version: Option<u64>,
        ret_us: u64,
    ) -> bool {
        let by_version =
            version.and_then(|v| if v == 0 { Some(0) } else { owner.get(&v).copied() });
        match (state.or(by_version), version) {
            (Some(0), _) => self.absent_until = self.absent_until.max(ret_us),
            (Some(s), _) if ret_us < self.first_seen[s as usize] => {
                self.first_seen[s as usize] = ret_us;
                return true;
            }
            (Some(_), _) => {}
            (None, Some(v)) => {
                let first = self.unresolved.entry(v).or_insert(u64::MAX);
                *first = (*first).min(ret_us);
            }
            (None, None) => {}
        }
        false
    }
}

impl Model {
    /// Prepares `events` for the search: resolves observed values to writes,
    /// learns versions, applies the unknown-outcome reductions. Returns the
    /// verdict at once when the history alone shows a violation.
    fn build(events: &[&Event]) -> Result<Model, Verdict> {
        let mut state_of: BTreeMap<&str, State> = BTreeMap::new();
        let mut failed: BTreeMap<&str, usize> = BTreeMap::new();
        let mut writer: Vec<Option<usize>> = vec![None]; // state -> event index
        let mut versions: Vec<Option<u64>> = vec![Some(0)];
        for (i, e) in events.iter().enumerate() {
            check_shape(e)?;
            let Some(Some(value)) = e.written() else { continue };
            if let Some(prev) = state_of
                .get(value)
                .map(|&s| writer[s as usize])
                .or(failed.get(value).map(|&f| Some(f)))
            {
                let prev = prev.map(|p| events[p].to_string()).unwrap_or_default();
                return Err(Verdict::Invalid(format!(
                    "value {value:?} written twice: {prev} and {e}"
                )));
            }
            if e.outcome == Outcome::Fail {
                failed.insert(value, i);
                continue;
            }
            let version = match e.outcome {
                Outcome::Ok(Ret::Written(v)) => Some(v),
                _ => None,
            };
            state_of.insert(value, writer.len() as State);
            writer.push(Some(i));
            versions.push(version);
        }
        // Resolve reads to states; learn versions from GETV.
        let resolve = |value: &Option<String>, e: &Event| -> Result<State, Verdict> {
            let Some(v) = value else { return Ok(0) };
            if let Some(&s) = state_of.get(v.as_str()) {
                return Ok(s);
            }
            Err(Verdict::Violation(match failed.get(v.as_str()) {
                Some(&f) => {
                    format!("{e} observed a value whose write definitely failed: {}", events[f])
                }
                None => format!("{e} observed a value no operation ever wrote"),
            }))
        };
        let mut observed: Vec<Option<State>> = vec![None; events.len()];
        for (i, e) in events.iter().enumerate() {
            match &e.outcome {
                Outcome::Ok(Ret::Value(v)) => observed[i] = Some(resolve(v, e)?),
                Outcome::Ok(Ret::Versioned(v)) => {
                    let value = v.as_ref().map(|(_, v)| v.clone());
                    let s = resolve(&value, e)?;
                    if let Some((n, _)) = v {
                        match versions[s as usize] {
                            Some(known) if known != *n => {
                                let w = writer[s as usize]
                                    .map(|w| events[w].to_string())
                                    .unwrap_or_default();
                                return Err(Verdict::Violation(format!(
                                    "{e} saw version {n}, but the write of that value has version {known}: {w}"
                                )));
                            }
                            _ => versions[s as usize] = Some(*n),
                        }
                    }
                    observed[i] = Some(s);
                }
                _ => {}
            }
        }
        let mut owner: BTreeMap<u64, State> = BTreeMap::new();
        for (s, v) in versions.iter().enumerate().skip(1) {
            if let Some(v) = v {
                if let Some(&other) = owner.get(v) {
                    let a =
                        writer[other as usize].map(|w| events[w].to_string()).unwrap_or_default();
                    let b = writer[s].map(|w| events[w].to_string()).unwrap_or_default();
                    return Err(Verdict::Violation(format!(
                        "two writes have version {v}: {a} and {b}"
                    )));
                }
                owner.insert(*v, s as State);
            }
        }
        check_version_order(events)?;
        let known: BTreeSet<u64> = owner.keys().copied().collect();
        let mut model = Model { ops: Vec::new(), versions, known, classes: 0 };
        model.place(events, &state_of, &observed, &owner)?;
        Ok(model)
    }

    /// Builds the operations to search, applying the reductions.
    fn place(
        &mut self,
        events: &[&Event],
        state_of: &BTreeMap<&str, State>,
        observed: &[Option<State>],
        owner: &BTreeMap<u64, State>,
    ) -> Result<(), Verdict> {
        let seen = Sightings::gather(events, state_of, observed, owner, self.versions.len());
        let (first_seen, absent_until) = (&seen.first_seen, seen.absent_until);
        let unknown_del_class = events.len();
        self.classes = events.len() + 1;
        let mut unseen_writes_called: Vec<u64> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let base = SearchOp {
                event: i,
                op: ModelOp::Delete,
                call_us: e.call_us,
                ret_us: e.ret_us,
                optional: false,
                class: i,
            };
            let placed = match (&e.op, &e.outcome) {
                (_, Outcome::Fail) => None,
                (Op::Get | Op::GetV, Outcome::Unknown) => None,
                (Op::Get | Op::GetV, Outcome::Ok(_)) => Some(SearchOp {
                    op: ModelOp::Read { want: observed[i].expect("resolved above") },
                    ..base
                }),
                (Op::Cas { expected, .. }, Outcome::Ok(Ret::Conflict(current))) => Some(SearchOp {
                    op: ModelOp::Conflict { expected: *expected, current: *current },
                    ..base
                }),
                (Op::Del, Outcome::Ok(_)) => Some(base),
                // Only useful while something may still observe absence; all
                // such DELs share that window, so they are interchangeable.
                (Op::Del, Outcome::Unknown) => (absent_until >= e.call_us).then_some(SearchOp {
                    ret_us: absent_until,
                    optional: true,
                    class: unknown_del_class,
                    ..base
                }),
                (Op::Put { value } | Op::Cas { value, .. }, outcome) => {
                    let to = state_of[value.as_str()];
                    let expected = match &e.op {
                        Op::Cas { expected, .. } => Some(*expected),
                        _ => None,
                    };
                    let op = ModelOp::Write { to, expected };
                    if matches!(outcome, Outcome::Ok(_)) {
                        Some(SearchOp { op, ..base })
                    } else if first_seen[to as usize] != u64::MAX {
                        // Observed: it happened, before the first observer returned.
                        let ret_us = first_seen[to as usize].max(e.call_us);
                        Some(SearchOp { op, ret_us, ..base })
                    } else {
                        // Unobserved: no read depends on its value; only a
                        // version nobody else owns might be its (below).
                        if self.versions[to as usize].is_none() {
                            unseen_writes_called.push(e.call_us);
                        }
                        None
                    }
                }
            };
            self.ops.extend(placed);
        }
        self.place_anonymous(&seen.unresolved, &unseen_writes_called)
    }

    /// Stand-ins for unobserved writes that own a version nobody else does
    /// (see the module docs).
    fn place_anonymous(
        &mut self,
        unresolved: &BTreeMap<u64, u64>,
        unseen_writes_called: &[u64],
    ) -> Result<(), Verdict> {
        // A version no known write owns belongs to a write whose version was
        // never seen. If that write was observed, it is placed above (and
        // matches the version "maybe"). Otherwise it is one of the unobserved
        // unknown writes: stand in for it with an anonymous write of that
        // version, called with the earliest of them, needed before the version
        // was first seen, and optional (the observed writes may explain it).
        for (&version, &seen_us) in unresolved {
            // Versions grow along the linearization (they are log indices), so
            // the owner comes after every write of a lower known version and
            // before every write of a higher one.
            let (mut after_us, mut before_us) = (0u64, seen_us);
            for op in &self.ops {
                if let ModelOp::Write { to, .. } = op.op {
                    match self.versions[to as usize] {
                        Some(v) if v < version => after_us = after_us.max(op.call_us),
                        Some(v) if v > version => before_us = before_us.min(op.ret_us),
                        _ => {}
                    }
                }
            }
            let candidates = unseen_writes_called.iter().filter(|&&c| c <= before_us);
            let Some(&first_call_us) = candidates.min() else {
                if self.versions.iter().any(Option::is_none) {
                    continue; // Only an observed write can own it.
                }
                return Err(Verdict::Violation(format!(
                    "version {version} was seen, but no write could have it"
                )));
            };
            let to = self.versions.len() as State;
            self.versions.push(Some(version));
            let class = self.classes;
            self.classes += 1;
            let call_us = first_call_us.max(after_us).min(before_us);
            self.ops.push(SearchOp {
                event: NIL,
                op: ModelOp::Write { to, expected: None },
                call_us,
                ret_us: before_us,
                optional: true,
                class,
            });
        }
        Ok(())
    }

    /// Whether state `s`'s version is `v`.
    fn version_match(&self, s: State, v: u64) -> Match {
        match self.versions[s as usize] {
            Some(known) if known == v => Match::Yes,
            Some(_) => Match::No,
            // A present key has a version >= 1; a version some other write
            // owns cannot be this one's.
            None if v == 0 || self.known.contains(&v) => Match::No,
            None => Match::Maybe,
        }
    }

    /// Applies `op` to state `s`: the new state, or `None` if `op` cannot
    /// take effect now.
    fn step(&self, s: State, op: ModelOp) -> Option<State> {
        match op {
            ModelOp::Write { to, expected: None } => Some(to),
            ModelOp::Write { to, expected: Some(e) } => {
                (self.version_match(s, e) != Match::No).then_some(to)
            }
            ModelOp::Delete => Some(0),
            ModelOp::Read { want } => (want == s).then_some(s),
            ModelOp::Conflict { expected, current } => {
                let ok = self.version_match(s, expected) != Match::Yes
                    && self.version_match(s, current) != Match::No;
                ok.then_some(s)
            }
        }
    }
}

/// Versions are log indices, so they grow along the linearization: a write
/// acknowledged before another was called has the lower version. Checking
/// this up front gives a plain report, and lets the search rely on it.
fn check_version_order(events: &[&Event]) -> Result<(), Verdict> {
    let mut acked: Vec<(u64, &Event)> = events
        .iter()
        .filter_map(|e| match (e.written(), &e.outcome) {
            (Some(_), Outcome::Ok(Ret::Written(v))) => Some((*v, *e)),
            _ => None,
        })
        .collect();
    acked.sort_by_key(|&(v, e)| (v, e.id));
    // Walking from the highest version down, remember the earliest return.
    let mut earliest: Option<&Event> = None;
    for &(v, e) in acked.iter().rev() {
        if let Some(later) = earliest {
            if later.ret_us < e.call_us {
                return Err(Verdict::Violation(format!(
                    "versions out of order: {later} returned version {} before {e} was called, which got version {v}",
                    match later.outcome {
                        Outcome::Ok(Ret::Written(lv)) => lv,
                        _ => 0,
                    }
                )));
            }
        }
        if earliest.is_none_or(|x| e.ret_us < x.ret_us) {
            earliest = Some(e);
        }
    }
    Ok(())
}

/// Rejects an event whose result does not fit its operation.
fn check_shape(e: &Event) -> Result<(), Verdict> {
    let fits = match (&e.op, &e.outcome) {
        (_, Outcome::Fail | Outcome::Unknown) => true,
        (Op::Put { .. } | Op::Del, Outcome::Ok(r)) => matches!(r, Ret::Written(_)),
        (Op::Get, Outcome::Ok(r)) => matches!(r, Ret::Value(_)),
        (Op::GetV, Outcome::Ok(r)) => matches!(r, Ret::Versioned(_)),
        (Op::Cas { .. }, Outcome::Ok(r)) => matches!(r, Ret::Written(_) | Ret::Conflict(_)),
    };
    if !fits {
        return Err(Verdict::Invalid(format!("{e}: the result does not fit the operation")));
    }
    if e.outcome != Outcome::Unknown && e.ret_us < e.call_us {
        return Err(Verdict::Invalid(format!("{e}: returns before its call")));
    }
    Ok(())
}

/// SplitMix64: the random keys of the memo hash (deterministic).
fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 128-bit random key.
fn key128(x: &mut u64) -> u128 {
    (u128::from(splitmix(x)) << 64) | u128::from(splitmix(x))
}

/// Marks the end of the linked list.
const NIL: usize = usize::MAX;

/// The event list: entry 0 is the head; entry `1 + 2k` is op k's call,
/// `2 + 2k` its return.
struct List {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl List {
    /// Unlinks op `k`'s call and return.
    fn lift(&mut self, k: usize) {
        for e in [1 + 2 * k, 2 + 2 * k] {
            let (p, n) = (self.prev[e], self.next[e]);
            self.next[p] = n;
            if n != NIL {
                self.prev[n] = p;
            }
        }
    }

    /// Relinks op `k`'s return and call (the reverse of [`List::lift`]).
    fn unlift(&mut self, k: usize) {
        for e in [2 + 2 * k, 1 + 2 * k] {
            let (p, n) = (self.prev[e], self.next[e]);
            self.next[p] = e;
            if n != NIL {
                self.prev[n] = e;
            }
        }
    }
}

/// Where the search got furthest, for the explanation.
struct Deepest {
    depth: usize,
    state: State,
    last: Option<usize>,
    blocked: usize,
    pending: Vec<usize>,
}

/// The search proper. Returns the verdict and the steps taken.
fn search(model: &Model, events: &[&Event], opts: Options) -> (Verdict, u64) {
    let ops = &model.ops;
    let n = ops.len();
    // Order the call and return entries by time; calls first on a tie.
    let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (k, op) in ops.iter().enumerate() {
        order.push((op.call_us, 0, 1 + 2 * k));
        order.push((op.ret_us, 1, 2 + 2 * k));
    }
    order.sort_unstable();
    let mut list = List { next: vec![NIL; 2 * n + 1], prev: vec![NIL; 2 * n + 1] };
    let mut last = 0;
    for &(_, _, e) in &order {
        list.next[last] = e;
        list.prev[e] = last;
        last = e;
    }
    let mut seed = 0x5EED_u64;
    // Per class: the key added when an op takes effect, and when it is dropped.
    let taken_keys: Vec<u128> = (0..model.classes).map(|_| key128(&mut seed)).collect();
    let dropped_keys: Vec<u128> = (0..model.classes).map(|_| key128(&mut seed)).collect();
    let state_salt = key128(&mut seed);
    let memo_key = |h: u128, s: State| h ^ (state_salt.wrapping_mul(u128::from(s) + 1));

    let mut state: State = 0;
    let mut hash: u128 = 0;
    // Ops placed, in order: (op, state before, hash before, dropped rather than taken).
    let mut stack: Vec<(usize, State, u128, bool)> = Vec::new();
    let mut seen: HashSet<u128> = HashSet::new();
    let mut deepest = Deepest { depth: 0, state: 0, last: None, blocked: NIL, pending: Vec::new() };
    let mut steps = 0u64;
    let mut entry = list.next[0];
    loop {
        if entry == NIL {
            return (Verdict::Linearizable, steps);
        }
        steps += 1;
        if steps > opts.steps_max {
            let msg = format!(
                "gave up after {steps} steps with {} of {n} operations placed at best",
                deepest.depth
            );
            return (Verdict::Inconclusive(msg), steps);
        }
        let k = (entry - 1) / 2;
        let is_call = entry % 2 == 1;
        // At a call: try op k next. At an optional op's return: drop it.
        // At a definite op's return: it was not placed in time; backtrack.
        let next = if is_call {
            model
                .step(state, ops[k].op)
                // Taking an optional op that changes nothing is never better
                // than keeping it for later.
                .filter(|&s| !(ops[k].optional && s == state))
                .map(|s| (s, taken_keys[ops[k].class]))
        } else if ops[k].optional {
            Some((state, dropped_keys[ops[k].class]))
        } else {
            None
        };
        if let Some((next_state, key)) = next {
            let next_hash = hash.wrapping_add(key);
            if seen.insert(memo_key(next_hash, next_state)) {
                stack.push((k, state, hash, !is_call));
                state = next_state;
                hash = next_hash;
                list.lift(k);
                entry = list.next[0];
                continue;
            }
        }
        if is_call {
            entry = list.next[entry];
            continue;
        }
        if !ops[k].optional && (deepest.blocked == NIL || stack.len() > deepest.depth) {
            deepest = Deepest {
                depth: stack.len(),
                state,
                last: stack.iter().rev().find(|p| !p.3).map(|p| p.0),
                blocked: k,
                pending: pending_calls(&list, entry),
            };
        }
        let Some((back, prev_state, prev_hash, dropped)) = stack.pop() else {
            return (Verdict::Violation(explain(model, events, &deepest)), steps);
        };
        state = prev_state;
        hash = prev_hash;
        list.unlift(back);
        // A taken op: try the calls after it instead. A dropped op had no
        // other choice at its return: go back there (its drop is now memoized,
        // so the search backtracks further).
        entry = if dropped { 2 + 2 * back } else { list.next[1 + 2 * back] };
    }
}

/// The ops whose calls come before `entry` in the list (not placed yet).
fn pending_calls(list: &List, entry: usize) -> Vec<usize> {
    let mut pending = Vec::new();
    let mut e = list.next[0];
    while e != NIL && e != entry {
        if e % 2 == 1 {
            pending.push((e - 1) / 2);
        }
        e = list.next[e];
    }
    pending
}

/// A readable account of where the search got stuck.
fn explain(model: &Model, events: &[&Event], d: &Deepest) -> String {
    let anonymous = |s: State| {
        format!("an unobserved write of version {}", model.versions[s as usize].unwrap_or(0))
    };
    let ev = |k: usize| match (model.ops[k].event, model.ops[k].op) {
        (NIL, ModelOp::Write { to, .. }) => anonymous(to),
        (event, _) => events[event].to_string(),
    };
    let describe = |s: State| -> String {
        if s == 0 {
            return "absent".to_string();
        }
        let op = model.ops.iter().find(|o| matches!(o.op, ModelOp::Write { to, .. } if to == s));
        match op.map(|o| (o.event, o.event.checked_sub(0).and_then(|e| events.get(e)))) {
            Some((_, Some(e))) => match &e.op {
                Op::Put { value } | Op::Cas { value, .. } => {
                    format!("{value:?} (written by op#{})", e.id)
                }
                _ => format!("state {s}"),
            },
            _ => anonymous(s),
        }
    };
    let mut out = format!(
        "no linearization exists. The longest linearizable prefix places {} operation(s)",
        d.depth
    );
    if let Some(last) = d.last {
        out.push_str(&format!(", the last being {}", ev(last)));
    }
    out.push_str(&format!("; the register then holds {}.\n", describe(d.state)));
    if d.blocked != NIL {
        out.push_str(&format!(
            "  This operation must take effect before it returned, but cannot: {}\n",
            ev(d.blocked)
        ));
    }
    let others: Vec<String> =
        d.pending.iter().filter(|&&k| k != d.blocked).map(|&k| format!("    {}", ev(k))).collect();
    if !others.is_empty() {
        out.push_str("  Operations that could still have taken effect first (none helps):\n");
        out.push_str(&others.join("\n"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A history under construction: `ok`, `fail`, `unknown` add events.
    #[derive(Default)]
    struct H {
        events: Vec<Event>,
    }

    impl H {
        fn add(&mut self, client: u64, op: Op, call: u64, ret: u64, outcome: Outcome) -> &mut Self {
            let id = self.events.len() as u64;
            self.events.push(Event {
                id,
                client,
                key: "k".into(),
                op,
                call_us: call,
                ret_us: ret,
                outcome,
            });
            self
        }
        fn put(&mut self, c: u64, v: &str, call: u64, ret: u64, version: u64) -> &mut Self {
            self.add(c, Op::Put { value: v.into() }, call, ret, Outcome::Ok(Ret::Written(version)))
        }
        fn get(&mut self, c: u64, v: Option<&str>, call: u64, ret: u64) -> &mut Self {
            self.add(c, Op::Get, call, ret, Outcome::Ok(Ret::Value(v.map(String::from))))
        }
        fn verdict(&self) -> Verdict {
            let reports = check(&self.events, Options::default());
            assert_eq!(reports.len(), 1);
            reports[0].verdict.clone()
        }
    }

    fn is_violation(v: &Verdict) -> bool {
        matches!(v, Verdict::Violation(_))
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let mut h = H::default();
        h.get(1, None, 0, 1).put(1, "a", 2, 3, 1).get(2, Some("a"), 4, 5);
        h.add(1, Op::Del, 6, 7, Outcome::Ok(Ret::Written(2))).get(2, None, 8, 9);
        assert_eq!(h.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_is_rejected() {
        let mut h = H::default();
        h.put(1, "a", 0, 10, 1).put(1, "b", 20, 30, 2).get(2, Some("a"), 40, 50);
        let v = h.verdict();
        assert!(is_violation(&v), "{v:?}");
        if let Verdict::Violation(text) = v {
            assert!(text.contains("op#2"), "the explanation names the stale read: {text}");
        }
    }

    #[test]
    fn lost_write_is_rejected() {
        let mut h = H::default();
        h.put(1, "a", 0, 10, 1).get(2, None, 20, 30);
        assert!(is_violation(&h.verdict()));
        let finals = BTreeMap::from([("k".to_string(), None)]);
        let lost = lost_writes(&h.events, &finals);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(lost[0].contains("op#0"), "{lost:?}");
    }

    #[test]
    fn read_of_a_never_written_value_is_rejected() {
        let mut h = H::default();
        h.put(1, "a", 0, 10, 1).get(2, Some("ghost"), 20, 30);
        let v = h.verdict();
        assert!(
            matches!(&v, Verdict::Violation(t) if t.contains("no operation ever wrote")),
            "{v:?}"
        );
    }

    #[test]
    fn read_of_a_failed_write_is_rejected() {
        let mut h = H::default();
        h.add(1, Op::Put { value: "a".into() }, 0, 10, Outcome::Fail).get(2, Some("a"), 20, 30);
        let v = h.verdict();
        assert!(matches!(&v, Verdict::Violation(t) if t.contains("definitely failed")), "{v:?}");
    }

    #[test]
    fn overlapping_concurrent_ops_are_accepted() {
        // Two writes overlap; reads during them may see either order, as long
        // as all reads agree with one order.
        let mut h = H::default();
        h.put(1, "a", 0, 100, 1).put(2, "b", 10, 90, 2);
        h.get(3, Some("b"), 20, 30).get(3, Some("a"), 40, 50).get(4, Some("a"), 110, 120);
        assert_eq!(h.verdict(), Verdict::Linearizable);
        // But once "a" is seen after "b", "b" cannot come back.
        h.get(3, Some("b"), 130, 140);
        assert!(is_violation(&h.verdict()));
    }

    #[test]
    fn unknown_write_that_appears_later_is_accepted() {
        let mut h = H::default();
        h.put(1, "a", 0, 10, 1);
        h.add(2, Op::Put { value: "b".into() }, 20, 30, Outcome::Unknown);
        h.get(3, Some("a"), 40, 50).get(3, Some("b"), 1000, 1010).get(1, Some("b"), 2000, 2010);
        assert_eq!(h.verdict(), Verdict::Linearizable);
        // An unknown write that never shows is fine too.
        let mut h = H::default();
        h.put(1, "a", 0, 10, 1);
        h.add(2, Op::Put { value: "b".into() }, 20, 30, Outcome::Unknown);
        h.get(3, Some("a"), 40, 50);
        assert_eq!(h.verdict(), Verdict::Linearizable);
        // But it cannot take effect before its call.
        let mut h = H::default();
        h.get(3, Some("b"), 0, 10);
        h.add(2, Op::Put { value: "b".into() }, 20, 30, Outcome::Unknown);
        assert!(is_violation(&h.verdict()));
    }

    #[test]
    fn unknown_delete_may_take_effect_late() {
        let mut h = H::default();
        h.put(1, "a", 0, 10, 1);
        h.add(2, Op::Del, 20, 30, Outcome::Unknown);
        h.get(3, Some("a"), 40, 50).get(3, None, 60, 70);
        assert_eq!(h.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn cas_follows_versions() {
        let mut h = H::default();
        h.put(1, "a", 0, 10, 5);
        h.add(2, Op::GetV, 20, 30, Outcome::Ok(Ret::Versioned(Some((5, "a".into())))));
        h.add(2, Op::Cas { expected: 5, value: "b".into() }, 40, 50, Outcome::Ok(Ret::Written(6)));
        h.add(3, Op::Cas { expected: 5, value: "c".into() }, 60, 70, Outcome::Ok(Ret::Conflict(6)));
        h.get(1, Some("b"), 80, 90);
        assert_eq!(h.verdict(), Verdict::Linearizable);
        // A CAS that succeeds against a version that was already replaced is a violation.
        h.add(
            3,
            Op::Cas { expected: 5, value: "d".into() },
            100,
            110,
            Outcome::Ok(Ret::Written(7)),
        );
        assert!(is_violation(&h.verdict()));
    }

    #[test]
    fn getv_version_mismatch_is_rejected() {
        let mut h = H::default();
        h.put(1, "a", 0, 10, 5);
        h.add(2, Op::GetV, 20, 30, Outcome::Ok(Ret::Versioned(Some((4, "a".into())))));
        assert!(is_violation(&h.verdict()));
    }

    #[test]
    fn versions_out_of_real_time_order_are_rejected() {
        let mut h = H::default();
        h.put(1, "a", 0, 10, 5).put(2, "b", 20, 30, 4);
        let v = h.verdict();
        assert!(matches!(&v, Verdict::Violation(t) if t.contains("out of order")), "{v:?}");
        // Overlapping writes may get either order.
        let mut h = H::default();
        h.put(1, "a", 0, 30, 5).put(2, "b", 10, 20, 4).get(3, Some("a"), 40, 50);
        assert_eq!(h.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn log_indices_are_unique_and_ordered_across_keys() {
        let mut h = H::default();
        h.put(1, "a", 0, 10, 5).put(2, "b", 20, 30, 6);
        assert!(log_order_violations(&h.events).is_empty());
        h.events[1].key = "other".into();
        h.events[1].outcome = Outcome::Ok(Ret::Written(5));
        assert_eq!(
            log_order_violations(&h.events).len(),
            1,
            "{:?}",
            log_order_violations(&h.events)
        );
    }

    #[test]
    fn value_written_twice_is_invalid() {
        let mut h = H::default();
        h.put(1, "a", 0, 10, 1).put(1, "a", 20, 30, 2);
        assert!(matches!(h.verdict(), Verdict::Invalid(_)));
    }

    /// A deterministic history of `n` ops from `clients` clients against a
    /// simulated atomic register: each op takes effect at a point inside its
    /// [call, return] interval, in op order, so the history is linearizable by
    /// construction; intervals overlap across clients. Every kind of op and
    /// outcome appears: unknown writes that did or did not take effect, CAS
    /// with current and stale versions, GETV.
    fn random_history(n: usize, clients: u64, seed: u64) -> Vec<Event> {
        let mut rng = seed;
        let mut free_at = vec![0u64; clients as usize];
        let (mut value, mut version): (Option<String>, u64) = (None, 0);
        let mut events = Vec::new();
        let mut t = 0u64;
        for i in 0..n {
            let mut roll = || splitmix(&mut rng);
            t += 1 + roll() % 5;
            let c = roll() % clients;
            let call = t.max(free_at[c as usize]);
            let at = call + 1 + roll() % 20; // where it takes effect
            let ret = at + 1 + roll() % 20;
            free_at[c as usize] = ret + 1;
            let (kind, unknown, applies) = (roll() % 20, roll() % 10 == 0, roll() % 2 == 0);
            let index = i as u64 + 1; // the log index a write would get
            let write = |new: Option<String>, value: &mut Option<String>, version: &mut u64| {
                if !unknown || applies {
                    *value = new;
                    *version = if value.is_some() { index } else { 0 };
                }
                if unknown {
                    Outcome::Unknown
                } else {
                    Outcome::Ok(Ret::Written(index))
                }
            };
            let (op, outcome) = match kind {
                0..=6 => {
                    let v = format!("v{i}");
                    (Op::Put { value: v.clone() }, write(Some(v), &mut value, &mut version))
                }
                7 => (Op::Del, write(None, &mut value, &mut version)),
                8 | 9 => {
                    let expected = if roll() % 2 == 0 { version } else { roll() % (index + 1) };
                    let v = format!("v{i}");
                    let op = Op::Cas { expected, value: v.clone() };
                    if expected == version {
                        (op, write(Some(v), &mut value, &mut version))
                    } else {
                        (op, Outcome::Ok(Ret::Conflict(version)))
                    }
                }
                10..=11 => {
                    let seen = value.clone().map(|v| (version, v));
                    (Op::GetV, Outcome::Ok(Ret::Versioned(seen)))
                }
                _ => (Op::Get, Outcome::Ok(Ret::Value(value.clone()))),
            };
            let key = "k".to_string();
            events.push(Event {
                id: i as u64,
                client: c,
                key,
                op,
                call_us: call,
                ret_us: ret,
                outcome,
            });
            t = at;
        }
        events
    }

    #[test]
    fn two_thousand_ops_check_fast() {
        for (clients, seed) in [(4, 7), (8, 8), (16, 9)] {
            let events = random_history(2000, clients, seed);
            let started = Instant::now();
            let reports = check(&events, Options::default());
            let took = started.elapsed();
            assert_eq!(reports[0].verdict, Verdict::Linearizable, "{:?}", reports[0]);
            assert!(took < Duration::from_secs(2), "took {took:?}, {} steps", reports[0].steps);
        }
    }

    #[test]
    #[ignore = "a timing probe: cargo test --release -p driver -- --ignored --nocapture"]
    fn large_histories_check_in_seconds() {
        for (n, clients) in [(20_000, 8), (50_000, 8), (20_000, 32)] {
            let events = random_history(n, clients, 3);
            let started = Instant::now();
            let reports = check(&events, Options::default());
            println!(
                "{n} ops, {clients} clients: {:?} in {:?}",
                reports[0].verdict,
                started.elapsed()
            );
        }
    }

    #[test]
    fn one_stale_read_in_two_thousand_ops_is_found() {
        let mut events = random_history(2000, 8, 11);
        let first = events
            .iter()
            .find_map(|e| match (&e.op, &e.outcome) {
                (Op::Put { value }, Outcome::Ok(_)) => Some(value.clone()),
                _ => None,
            })
            .expect("some acknowledged PUT");
        let read = events[1500..].iter_mut().find(|e| e.op == Op::Get).expect("a later GET");
        read.outcome = Outcome::Ok(Ret::Value(Some(first)));
        let reports = check(&events, Options::default());
        assert!(is_violation(&reports[0].verdict), "{:?}", reports[0]);
    }

    #[test]
    fn step_budget_makes_the_search_inconclusive_not_a_pass() {
        let events = random_history(500, 8, 9);
        let reports = check(&events, Options { steps_max: 10 });
        assert!(matches!(reports[0].verdict, Verdict::Inconclusive(_)), "{:?}", reports[0].verdict);
    }
}
