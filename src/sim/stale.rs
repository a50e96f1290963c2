//! The stale-promise episode (DESIGN §6, §7): a fault schedule that reacts to
//! the protocol to build the one history in which a promise from a wiped
//! replica's old incarnation would decide an election. Random faults almost
//! never build it: every step below must land inside one election timeout of
//! the one before, and the promise check in `valid_promises` is the only
//! thing that stands in its way once they do.
//!
//! Cast: O leads epoch e_o and serves; W is the highest other id; X is the
//! replica that gets wiped; Y (a majority less two of them) will promise W;
//! Z (the rest) keeps committing with O. Needs N >= 5 and O, X and the Zs
//! to make a write quorum, so O commits without W or Y (N=5, NW=3).
//!
//! 1. Cut O <-> W; stall W -> Y, Z (W's COORDINATOR waits on the wire) and
//!    everything X sends (its new promise must reach nobody but W). W's
//!    election timer runs out, it wins Bully and asks for promises for
//!    e_w > e_o; only X hears it and promises.
//! 2. X's PROMISE is on its stalled link to W: W stops (SIGSTOP; it keeps
//!    every message that reaches it, X's promise first), the link is
//!    released, X crashes and comes back wiped a few milliseconds later.
//! 3. X joins, registers with O, Y and Z (none of them has promised e_w, so
//!    X adopts e_o), catches up with O and is promoted: a full member that
//!    has forgotten its promise of e_w.
//! 4. W's delayed COORDINATOR reaches Y; Y promises e_w (its incarnation
//!    table names X's new incarnation), and once W holds that promise every
//!    message from Y is cut, so O's group never hears of e_w.
//! 5. O commits with X and Z past everything W, Y and the old X hold.
//! 6. W resumes: it holds promises from itself, Y and X's old incarnation, a
//!    majority only if the old incarnation counts. A correct W drops it (Y's
//!    table reports a newer one) and keeps campaigning; a W that counted it
//!    would recover without O's entries and propose over them, which the
//!    checker's "chosen slot proposed over" rule reports at once.
//!
//! Each wait gives up after `PHASE_MS_MAX` (a dropped message, a step that
//! went another way); then W resumes and every link heals. Random faults
//! stop while the episode runs, and it starts only once they all healed.

use super::cluster::{SimCluster, SimConfig};
use crate::protocol::quorum;
use crate::protocol::types::{Epoch, LogIndex, Millis, ReplicaId};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// How long one phase may wait for the protocol before the episode gives up.
pub const PHASE_MS_MAX: u64 = 500;
/// How long the wiped replica stays down.
const DOWN_MS: u64 = 10;

/// Where the episode is.
#[derive(Clone, Debug)]
enum Phase {
    /// Step 1: waiting for X's PROMISE of W's epoch on its stalled link.
    AwaitPromise,
    /// Step 2: X is down; it restarts wiped at this time.
    Down { until: Millis },
    /// Step 3: waiting for X's promotion.
    AwaitPromotion,
    /// Step 4: the Ys got W's COORDINATOR; waiting until W holds their promises.
    AwaitPromises,
    /// Step 5: waiting until O commits above this index.
    AwaitCommit { above: LogIndex },
}

/// What the runner does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Restart this replica with a wiped disk.
    RestartWiped(ReplicaId),
    /// The episode is over; faults may resume. `played`: it got to step 6
    /// (false: it gave up on the way).
    Done {
        played: bool,
    },
}

/// One running episode.
#[derive(Clone, Debug)]
pub struct StalePromise {
    o: ReplicaId,
    w: ReplicaId,
    x: ReplicaId,
    ys: Vec<ReplicaId>,
    /// The old X's last index when it crashed.
    x_last: LogIndex,
    /// W's epoch, once X promised it.
    e_w: Epoch,
    phase: Phase,
    deadline: Millis,
}

impl StalePromise {
    /// How many Ys and Zs a cluster of this shape casts, if it can play the
    /// episode at all: N >= 5 and O, X and the Zs make a write quorum.
    pub fn cast(cfg: &SimConfig) -> Option<(usize, usize)> {
        let ys = quorum::majority(cfg.n).checked_sub(2).filter(|k| *k >= 1)?;
        let zs = cfg.n.checked_sub(3 + ys)?;
        (2 + zs >= cfg.write_quorum).then_some((ys, zs))
    }

    /// Starts the episode when the cluster allows it: N >= 5, a serving
    /// leader that every replica follows, and a write quorum without W and
    /// the Ys. None otherwise.
    pub fn start(c: &mut SimCluster, rng: &mut StdRng) -> Option<StalePromise> {
        let (ys_len, _) = Self::cast(&c.cfg)?;
        let o = c.serving_leader()?;
        let epoch = c.replica(o)?.epoch();
        let settled = c.ids().into_iter().all(|id| {
            c.replica(id).is_some_and(|r| {
                r.epoch() == epoch && r.leader_id() == Some(o) && r.role_name() != "learner"
            }) && c.is_durable_full_member(id)
        });
        if !settled {
            return None;
        }
        let w = c.ids().into_iter().filter(|id| *id != o).max()?;
        let mut rest: Vec<ReplicaId> =
            c.ids().into_iter().filter(|id| *id != o && *id != w).collect();
        rest.shuffle(rng);
        let x = rest[0];
        let ys = rest[1..=ys_len].to_vec();
        let zs = rest[1 + ys_len..].to_vec();
        c.note(|| {
            format!(
                "stale-promise episode: leader r{o}, winner r{w}, wiped r{x}, ys {ys:?}, zs {zs:?}"
            )
        });
        c.cut(o, w);
        c.cut(w, o);
        for y in ys.iter().chain(&zs) {
            c.stall(w, *y);
        }
        for id in c.ids() {
            if id != x {
                c.stall(x, id);
            }
        }
        Some(StalePromise {
            o,
            w,
            x,
            ys,
            x_last: LogIndex(0),
            e_w: Epoch(0),
            phase: Phase::AwaitPromise,
            deadline: c.now.plus(PHASE_MS_MAX),
        })
    }

    /// Advances the episode after a millisecond of cluster time.
    pub fn step(&mut self, c: &mut SimCluster) -> Next {
        let now = c.now;
        let (o, w, x) = (self.o, self.w, self.x);
        match self.phase.clone() {
            Phase::AwaitPromise => {
                let Some(rx) = c.replica(x) else { return self.give_up(c) };
                if c.net.stall_holds(x, w, "promise") {
                    self.x_last = rx.last_log_index();
                    self.e_w = rx.epoch();
                    c.pause(w);
                    c.release(x, w);
                    c.crash(x, 0);
                    self.enter(Phase::Down { until: now.plus(DOWN_MS) }, now);
                }
            }
            Phase::Down { until } => {
                if now >= until {
                    self.enter(Phase::AwaitPromotion, now);
                    return Next::RestartWiped(x);
                }
                return Next::Continue;
            }
            Phase::AwaitPromotion => {
                let promoted = c.replica(x).is_some_and(|r| r.role_name() != "learner")
                    && c.is_durable_full_member(x);
                if promoted {
                    for y in self.ys.clone() {
                        c.release(w, y);
                        for id in c.ids() {
                            if id != y && id != w {
                                c.cut(y, id);
                            }
                        }
                    }
                    self.enter(Phase::AwaitPromises, now);
                }
            }
            Phase::AwaitPromises => {
                let held = c.holds_input(w, x, "promise")
                    && self.ys.iter().all(|y| c.holds_input(w, *y, "promise"));
                if held {
                    let mut above = self.x_last;
                    for id in self.ys.iter().chain(std::iter::once(&w)) {
                        let last = c.replica(*id).map(|r| r.last_log_index()).unwrap_or_default();
                        above = above.max(last);
                    }
                    for y in self.ys.clone() {
                        c.cut(y, w);
                    }
                    self.enter(Phase::AwaitCommit { above }, now);
                }
            }
            Phase::AwaitCommit { above } => {
                let committed = c.replica(o).is_some_and(|r| r.commit_index() > above);
                if committed {
                    let e_w = self.e_w;
                    c.note(|| format!("stale-promise episode: r{o} committed above {above}; r{w} (epoch {e_w}) resumes"));
                    return self.end(c, true);
                }
            }
        }
        if now >= self.deadline {
            return self.give_up(c);
        }
        Next::Continue
    }

    fn enter(&mut self, phase: Phase, now: Millis) {
        self.phase = phase;
        self.deadline = now.plus(PHASE_MS_MAX);
    }

    fn give_up(&mut self, c: &mut SimCluster) -> Next {
        let phase = format!("{:?}", self.phase);
        c.note(|| format!("stale-promise episode: gave up in {phase}"));
        self.end(c, false)
    }

    /// Every link heals and W resumes.
    fn end(&mut self, c: &mut SimCluster, played: bool) -> Next {
        c.heal();
        c.resume(self.w);
        Next::Done { played }
    }
}

#[cfg(test)]
mod tests {
    use super::super::runner::run_seed;

    /// Seeds (N=5, odd) tried in search of ones that play the episode to its end.
    const SEEDS_TRIED_MAX: u64 = 200;
    /// Played episodes the test wants.
    const PLAYED_WANTED: usize = 2;

    /// In the seeds that play the episode to its end, W resumes holding
    /// promises from itself, Y and X's old incarnation, a majority only if
    /// the old incarnation counted; the run passes every checker, so W
    /// never led with it (the checker reports a leader that proposes over a
    /// chosen slot at once).
    #[test]
    fn a_promise_from_a_wiped_replicas_old_incarnation_never_completes_a_majority() {
        let mut played = Vec::new();
        for seed in (1..2 * SEEDS_TRIED_MAX).step_by(2) {
            let r = run_seed(seed, false);
            let stats = r.outcome.unwrap_or_else(|e| panic!("seed {seed} failed: {e}"));
            if stats.stale_promise_played {
                played.push(seed);
                if played.len() == PLAYED_WANTED {
                    return;
                }
            }
        }
        panic!("only seeds {played:?} of the first {SEEDS_TRIED_MAX} odd ones played the episode");
    }
}
