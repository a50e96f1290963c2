//! A linearizability checker for one key (DESIGN §7): Wing & Gong's search
//! with Lowe's memoization, as in porcupine, over a register with delete:
//! PUT sets the value, DEL makes the key absent, GET returns the value or
//! NOTFOUND.
//!
//! Times are places in one global order of client calls and returns, so
//! "A returned before B was called" is exact. A write with an unknown outcome
//! (a timeout, or its replica crashed) has no return: it may take effect at
//! any point after its call, or never.

use std::collections::BTreeSet;

/// A value, by its unique number (every PUT writes a value nobody else writes).
pub type Value = u32;

/// What an operation did, as the model sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Put(Value),
    Del,
    /// A GET and what it returned (None = NOTFOUND).
    Get(Option<Value>),
}

/// One operation on the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    pub call: u64,
    /// None for a write whose outcome is unknown.
    pub ret: Option<u64>,
    pub kind: OpKind,
}

/// Memo entries after which the search gives up rather than run for long.
pub const MEMO_ENTRIES_MAX: usize = 500_000;

/// The verdict for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order of the operations explains what the reads saw.
    Violation,
    /// The search hit `MEMO_ENTRIES_MAX`.
    GaveUp,
}

/// The register model: the new state, or None when `op` cannot happen in `state`.
fn step(state: Option<Value>, op: OpKind) -> Option<Option<Value>> {
    match op {
        OpKind::Put(v) => Some(Some(v)),
        OpKind::Del => Some(None),
        OpKind::Get(seen) => (seen == state).then_some(state),
    }
}

/// Drops unknown-outcome writes no read can have seen. An unknown PUT whose
/// value no read returned changes nothing any read saw if left out; an unknown
/// DEL with no NOTFOUND read returning after its call likewise. Leaving them out
/// keeps the search small without changing the verdict.
fn prune(ops: &[Op]) -> Vec<Op> {
    let read_values: BTreeSet<Value> = ops
        .iter()
        .filter_map(|o| match o.kind {
            OpKind::Get(Some(v)) => Some(v),
            _ => None,
        })
        .collect();
    let last_notfound_ret =
        ops.iter().filter(|o| o.kind == OpKind::Get(None)).filter_map(|o| o.ret).max();
    ops.iter()
        .filter(|o| match (o.ret, o.kind) {
            (Some(_), _) => true,
            (None, OpKind::Put(v)) => read_values.contains(&v),
            (None, OpKind::Del) => last_notfound_ret.is_some_and(|r| r > o.call),
            (None, OpKind::Get(_)) => false,
        })
        .copied()
        .collect()
}

const NIL: usize = usize::MAX;

/// A doubly linked list of call and return events (index 0 is the head).
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For node k > 0: (operation, is call, node of its return for a call).
    info: Vec<(usize, bool, usize)>,
}

impl Events {
    fn build(ops: &[Op]) -> Events {
        // (time, order, op, is_call): a return at time t sorts before a call at t
        // cannot happen (times are unique); unknown returns go last.
        let mut evs: Vec<(u64, usize, bool)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            evs.push((op.call, i, true));
            evs.push((op.ret.unwrap_or(u64::MAX), i, false));
        }
        evs.sort_by_key(|(t, i, call)| (*t, !*call, *i));
        let len = evs.len() + 1;
        let mut next = vec![NIL; len];
        let mut prev = vec![NIL; len];
        let mut info = vec![(NIL, false, NIL); len];
        let mut ret_node = vec![NIL; ops.len()];
        for (k, (_, op, call)) in evs.iter().enumerate() {
            let node = k + 1;
            info[node] = (*op, *call, NIL);
            if !*call {
                ret_node[*op] = node;
            }
            prev[node] = k;
            next[k] = node;
        }
        for node in 1..len {
            if info[node].1 {
                info[node].2 = ret_node[info[node].0];
            }
        }
        Events { next, prev, info }
    }

    /// Takes a call and its return out of the list.
    fn lift(&mut self, call: usize) {
        let ret = self.info[call].2;
        for node in [call, ret] {
            let (p, n) = (self.prev[node], self.next[node]);
            self.next[p] = n;
            if n != NIL {
                self.prev[n] = p;
            }
        }
    }

    /// Puts them back (the reverse of `lift`).
    fn unlift(&mut self, call: usize) {
        let ret = self.info[call].2;
        for node in [ret, call] {
            let (p, n) = (self.prev[node], self.next[node]);
            self.next[p] = node;
            if n != NIL {
                self.prev[n] = node;
            }
        }
    }
}

/// Checks one key's history, starting from the absent state.
pub fn check(ops: &[Op]) -> Verdict {
    let ops = prune(ops);
    if ops.is_empty() {
        return Verdict::Linearizable;
    }
    let mut ev = Events::build(&ops);
    let words = ops.len().div_ceil(64);
    let mut done = vec![0u64; words];
    let mut memo: BTreeSet<(Vec<u64>, Option<Value>)> = BTreeSet::new();
    // Unknown DELs already called are interchangeable: each can take effect at
    // any later point. One scan of the candidates tries only the first of them
    // (`del_tried`), so the search never branches over which one it used.
    let free_del: Vec<bool> =
        ops.iter().map(|o| o.ret.is_none() && o.kind == OpKind::Del).collect();
    let mut del_tried = false;
    let mut stack: Vec<(usize, Option<Value>, bool)> = Vec::new();
    let mut state: Option<Value> = None;
    // Once every operation with a known outcome is placed, the unknown writes
    // left can all go last (a write always fits): the history is explained.
    let mut known_left = ops.iter().filter(|o| o.ret.is_some()).count();
    let mut node = ev.next[0];
    while known_left > 0 {
        if node == NIL {
            unreachable!("the event list always ends with a return");
        }
        let (op, is_call, _) = ev.info[node];
        if is_call && free_del[op] && del_tried {
            node = ev.next[node];
        } else if is_call {
            let tried_before = del_tried;
            del_tried |= free_del[op];
            if let Some(new) = step(state, ops[op].kind) {
                done[op / 64] |= 1 << (op % 64);
                if memo.insert((done.clone(), new)) {
                    if memo.len() > MEMO_ENTRIES_MAX {
                        return Verdict::GaveUp;
                    }
                    stack.push((node, state, tried_before));
                    state = new;
                    ev.lift(node);
                    if ops[op].ret.is_some() {
                        known_left -= 1;
                    }
                    node = ev.next[0];
                    del_tried = false;
                    continue;
                }
                done[op / 64] &= !(1 << (op % 64));
            }
            node = ev.next[node];
        } else {
            // A return of an operation not placed yet: backtrack.
            let Some((call, old, tried_before)) = stack.pop() else {
                return Verdict::Violation;
            };
            let op = ev.info[call].0;
            del_tried = tried_before || free_del[op];
            done[op / 64] &= !(1 << (op % 64));
            if ops[op].ret.is_some() {
                known_left += 1;
            }
            state = old;
            ev.unlift(call);
            node = ev.next[call];
        }
    }
    Verdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;
    use OpKind::*;

    fn op(call: u64, ret: u64, kind: OpKind) -> Op {
        Op { call, ret: Some(ret), kind }
    }

    #[test]
    fn sequential_register_with_delete_is_linearizable() {
        let h = [
            op(1, 2, Get(None)),
            op(3, 4, Put(1)),
            op(5, 6, Get(Some(1))),
            op(7, 8, Del),
            op(9, 10, Get(None)),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_a_violation() {
        let h = [op(1, 2, Put(1)), op(3, 4, Put(2)), op(5, 6, Get(Some(1)))];
        assert_eq!(check(&h), Verdict::Violation);
    }

    #[test]
    fn concurrent_writes_may_land_in_either_order() {
        let h = [op(1, 4, Put(1)), op(2, 5, Put(2)), op(6, 7, Get(Some(1)))];
        assert_eq!(check(&h), Verdict::Linearizable);
        let h = [op(1, 4, Put(1)), op(2, 5, Put(2)), op(6, 7, Get(Some(2)))];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn reads_cannot_go_back_in_time() {
        // Two reads after the write, the second sees the older value.
        let h =
            [op(1, 2, Put(1)), op(3, 10, Put(2)), op(4, 5, Get(Some(2))), op(6, 7, Get(Some(1)))];
        assert_eq!(check(&h), Verdict::Violation);
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        let unknown = Op { call: 3, ret: None, kind: Put(2) };
        let h = [op(1, 2, Put(1)), unknown, op(4, 5, Get(Some(1))), op(8, 9, Get(Some(2)))];
        assert_eq!(check(&h), Verdict::Linearizable, "applied late");
        let h = [op(1, 2, Put(1)), unknown, op(4, 5, Get(Some(1))), op(8, 9, Get(Some(1)))];
        assert_eq!(check(&h), Verdict::Linearizable, "never applied");
        let h = [op(1, 2, Put(1)), op(3, 4, Get(Some(2))), Op { call: 5, ret: None, kind: Put(2) }];
        assert_eq!(check(&h), Verdict::Violation, "seen before it was called");
    }

    #[test]
    fn an_unknown_delete_explains_a_notfound() {
        let h = [op(1, 2, Put(1)), Op { call: 3, ret: None, kind: Del }, op(6, 7, Get(None))];
        assert_eq!(check(&h), Verdict::Linearizable);
        let h = [op(1, 2, Put(1)), op(6, 7, Get(None))];
        assert_eq!(check(&h), Verdict::Violation, "a lost acknowledged write");
    }

    #[test]
    fn many_unknown_deletes_do_not_blow_up_the_search() {
        let mut h = vec![op(1, 2, Put(1))];
        let mut t = 3;
        for _ in 0..200 {
            h.push(Op { call: t, ret: None, kind: Del });
            t += 1;
        }
        for v in 2..100 {
            h.push(op(t, t + 1, Put(v)));
            h.push(op(t + 2, t + 3, Get(None)));
            t += 4;
        }
        assert_eq!(check(&h), Verdict::Linearizable);
        h.push(op(t, t + 1, Get(Some(5))));
        assert_eq!(check(&h), Verdict::Violation);
    }

    #[test]
    fn a_value_flipping_back_and_forth_is_a_violation() {
        let h = [
            op(1, 20, Put(1)),
            op(2, 21, Put(2)),
            op(3, 4, Get(Some(1))),
            op(5, 6, Get(Some(2))),
            op(7, 8, Get(Some(1))),
        ];
        assert_eq!(check(&h), Verdict::Violation);
    }
}
