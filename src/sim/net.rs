//! A simulated network (DESIGN §7): every message gets a delivery time drawn
//! from a seeded RNG, so messages are delayed and reordered; some are dropped
//! or duplicated; partitions and one-way link cuts drop whatever crosses them,
//! both when it is sent and when it would arrive.
//!
//! In manual mode (golden scripts, property tests) nothing is random: every
//! message waits in send order until the script delivers it.

use crate::protocol::message::Envelope;
use crate::protocol::types::{Millis, ReplicaId};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

/// Fault rates of one run. Rates are per mille of messages.
#[derive(Clone, Debug, Default)]
pub struct NetFaults {
    /// Messages lost.
    pub drop_per_mille: u32,
    /// Messages delivered twice (each copy with its own delay).
    pub dup_per_mille: u32,
    /// Usual one-way delay range, inclusive.
    pub delay_ms_min: u64,
    pub delay_ms_max: u64,
    /// Messages that take a slow path (reordering far behind later ones).
    pub slow_per_mille: u32,
    /// Upper bound of a slow message's delay.
    pub slow_delay_ms_max: u64,
}

/// A message on the wire.
#[derive(Clone, Debug)]
pub struct Msg {
    pub from: ReplicaId,
    pub to: ReplicaId,
    /// The receiver's life when the message was sent: a message never reaches a
    /// later process of the receiver (its TCP connection died with the old one).
    pub to_life: u32,
    pub env: Envelope,
}

/// Counters of one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetStats {
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub cut: u64,
}

/// The wire between all replicas.
pub struct SimNetwork {
    /// In flight, by (delivery time, send order).
    queue: BTreeMap<(Millis, u64), Msg>,
    next_seq: u64,
    rng: StdRng,
    /// Current fault rates (ignored in manual mode).
    pub faults: NetFaults,
    /// Directed links that drop everything: (from, to).
    cut: BTreeSet<(ReplicaId, ReplicaId)>,
    /// Manual mode: no delays, no random faults; the script delivers.
    pub manual: bool,
    /// Each replica's current life (restart count).
    lives: BTreeMap<ReplicaId, u32>,
    pub stats: NetStats,
}

impl SimNetwork {
    /// A network for `n` replicas drawing from `seed`.
    pub fn new(n: usize, seed: u64, manual: bool) -> SimNetwork {
        SimNetwork {
            queue: BTreeMap::new(),
            next_seq: 0,
            rng: StdRng::seed_from_u64(seed),
            faults: NetFaults::default(),
            cut: BTreeSet::new(),
            manual,
            lives: (1..=n as u8).map(|i| (ReplicaId(i), 0)).collect(),
            stats: NetStats::default(),
        }
    }

    /// Records that `id` restarted.
    pub fn set_life(&mut self, id: ReplicaId, life: u32) {
        self.lives.insert(id, life);
    }

    /// True when `from -> to` drops everything.
    pub fn is_cut(&self, from: ReplicaId, to: ReplicaId) -> bool {
        self.cut.contains(&(from, to))
    }

    /// Cuts one direction of a link.
    pub fn cut_link(&mut self, from: ReplicaId, to: ReplicaId) {
        self.cut.insert((from, to));
    }

    /// Cuts every link between different groups, both ways.
    pub fn partition(&mut self, groups: &[Vec<ReplicaId>]) {
        for (gi, a) in groups.iter().enumerate() {
            for (gj, b) in groups.iter().enumerate() {
                if gi == gj {
                    continue;
                }
                for x in a {
                    for y in b {
                        self.cut.insert((*x, *y));
                    }
                }
            }
        }
    }

    /// Restores every link; returns the directed links that were cut.
    pub fn heal(&mut self) -> Vec<(ReplicaId, ReplicaId)> {
        std::mem::take(&mut self.cut).into_iter().collect()
    }

    /// Puts one envelope on the wire to `to`. Returns false when it was lost at
    /// once (a cut link or a random drop).
    pub fn send(&mut self, now: Millis, to: ReplicaId, env: &Envelope) -> bool {
        self.stats.sent += 1;
        let from = env.from;
        if self.is_cut(from, to) {
            self.stats.cut += 1;
            return false;
        }
        let to_life = self.lives.get(&to).copied().unwrap_or(0);
        let msg = Msg { from, to, to_life, env: env.clone() };
        if self.manual {
            self.enqueue(now, msg);
            return true;
        }
        if self.per_mille(self.faults.drop_per_mille) {
            self.stats.dropped += 1;
            return false;
        }
        if self.per_mille(self.faults.dup_per_mille) {
            self.stats.duplicated += 1;
            let at = now.plus(self.delay());
            self.enqueue(at, msg.clone());
        }
        let at = now.plus(self.delay());
        self.enqueue(at, msg);
        true
    }

    fn enqueue(&mut self, at: Millis, msg: Msg) {
        self.queue.insert((at, self.next_seq), msg);
        self.next_seq += 1;
    }

    fn per_mille(&mut self, rate: u32) -> bool {
        rate > 0 && self.rng.random_range(0..1000u32) < rate
    }

    fn delay(&mut self) -> u64 {
        let f = &self.faults;
        let (slow, slow_max) = (f.slow_per_mille, f.slow_delay_ms_max);
        let (lo, hi) = (f.delay_ms_min, f.delay_ms_max.max(f.delay_ms_min));
        if self.per_mille(slow) && slow_max > hi {
            return self.rng.random_range(hi..=slow_max);
        }
        self.rng.random_range(lo..=hi)
    }

    /// Takes the next message due at or before `now`, if any. A message whose
    /// link is cut by now is lost (counted) and the next one is tried.
    pub fn pop_due(&mut self, now: Millis) -> Option<Msg> {
        loop {
            let (&key, _) = self.queue.first_key_value()?;
            if key.0 > now {
                return None;
            }
            let msg = self.queue.remove(&key).expect("just seen");
            if self.is_cut(msg.from, msg.to) {
                self.stats.cut += 1;
                continue;
            }
            return Some(msg);
        }
    }

    /// Manual mode: takes every queued message (in send order), or only those
    /// on the link `from -> to`. Messages on a link cut since they were sent
    /// are lost (counted), as in `pop_due`.
    pub fn take_queued(&mut self, link: Option<(ReplicaId, ReplicaId)>) -> Vec<Msg> {
        let keys: Vec<(Millis, u64)> = self
            .queue
            .iter()
            .filter(|(_, m)| link.is_none_or(|(f, t)| m.from == f && m.to == t))
            .map(|(k, _)| *k)
            .collect();
        let msgs: Vec<Msg> =
            keys.into_iter().map(|k| self.queue.remove(&k).expect("listed")).collect();
        let before = msgs.len();
        let kept: Vec<Msg> = msgs.into_iter().filter(|m| !self.is_cut(m.from, m.to)).collect();
        self.stats.cut += (before - kept.len()) as u64;
        kept
    }

    /// True when `msg` may still reach its receiver's current life.
    pub fn is_current(&self, msg: &Msg) -> bool {
        self.lives.get(&msg.to).copied().unwrap_or(0) == msg.to_life
    }
}
