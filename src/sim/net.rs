//! A simulated network (DESIGN §7): every message gets a delivery time drawn
//! from a seeded RNG, so messages are delayed and reordered; some are dropped
//! or duplicated; partitions and one-way link cuts drop whatever crosses them,
//! both when it is sent and when it would arrive. A stalled link (a TCP
//! connection whose peer stopped reading) holds what is sent on it, in order,
//! until it is released; the runner uses it to delay chosen messages past
//! others (see `runner`'s stale-promise episode).
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
    /// Directed links that hold everything sent on them until released.
    stalled: BTreeSet<(ReplicaId, ReplicaId)>,
    /// What stalled links hold, in send order.
    stalled_msgs: Vec<Msg>,
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
            stalled: BTreeSet::new(),
            stalled_msgs: Vec::new(),
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

    /// True when no link is cut or stalled.
    pub fn is_whole(&self) -> bool {
        self.cut.is_empty() && self.stalled.is_empty()
    }

    /// Cuts one direction of a link.
    pub fn cut_link(&mut self, from: ReplicaId, to: ReplicaId) {
        self.cut.insert((from, to));
    }

    /// Cuts every link between different groups, both ways.
    pub fn partition(&mut self, groups: &[Vec<ReplicaId>]) {
        self.cut.extend(crossing(groups));
    }

    /// Stalls every link between different groups, both ways: what is sent
    /// across waits for the heal, as TCP holds it during a partition.
    pub fn stall_partition(&mut self, groups: &[Vec<ReplicaId>]) {
        self.stalled.extend(crossing(groups));
    }

    /// Restores every link; returns the directed links that were cut.
    /// Stalled links deliver what they held from `now` on.
    pub fn heal(&mut self, now: Millis) -> Vec<(ReplicaId, ReplicaId)> {
        let stalled: Vec<(ReplicaId, ReplicaId)> = self.stalled.iter().copied().collect();
        for (from, to) in stalled {
            self.release(now, from, to);
        }
        std::mem::take(&mut self.cut).into_iter().collect()
    }

    /// Stalls one direction of a link: what is sent on it waits for `release`.
    pub fn stall_link(&mut self, from: ReplicaId, to: ReplicaId) {
        self.stalled.insert((from, to));
    }

    /// Ends the stall of `from -> to`: what it held is due at `now`, in send order.
    pub fn release(&mut self, now: Millis, from: ReplicaId, to: ReplicaId) {
        self.stalled.remove(&(from, to));
        let (held, kept): (Vec<Msg>, Vec<Msg>) = std::mem::take(&mut self.stalled_msgs)
            .into_iter()
            .partition(|m| m.from == from && m.to == to);
        self.stalled_msgs = kept;
        for msg in held {
            self.enqueue(now, msg);
        }
    }

    /// `from` crashed: what its stalled links held dies with its connections,
    /// and its links no longer stall.
    pub fn forget_stalled_from(&mut self, from: ReplicaId) {
        self.stalled.retain(|(f, _)| *f != from);
        self.stalled_msgs.retain(|m| m.from != from);
    }

    /// True when the stalled link `from -> to` holds a message named `name`.
    pub fn stall_holds(&self, from: ReplicaId, to: ReplicaId, name: &str) -> bool {
        self.stalled_msgs.iter().any(|m| m.from == from && m.to == to && m.env.msg.name() == name)
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
        if self.stalled.contains(&(from, to)) {
            self.stalled_msgs.push(msg);
            return true;
        }
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

/// Every directed link from one group to another.
fn crossing(groups: &[Vec<ReplicaId>]) -> Vec<(ReplicaId, ReplicaId)> {
    let mut links = Vec::new();
    for (gi, a) in groups.iter().enumerate() {
        for (gj, b) in groups.iter().enumerate() {
            if gi != gj {
                links.extend(a.iter().flat_map(|x| b.iter().map(move |y| (*x, *y))));
            }
        }
    }
    links
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::PeerMsg;
    use crate::protocol::types::{Epoch, Formation, Incarnation};

    fn env(from: u8, epoch: u64) -> Envelope {
        Envelope {
            from: ReplicaId(from),
            incarnation: Incarnation { counter: 1, nonce: from as u64 },
            epoch: Epoch(epoch),
            formation: Formation::Blank,
            learner: false,
            msg: PeerMsg::Hello,
        }
    }

    fn due(net: &mut SimNetwork, now: Millis) -> Vec<(u8, u64)> {
        std::iter::from_fn(|| net.pop_due(now)).map(|m| (m.from.0, m.env.epoch.0)).collect()
    }

    #[test]
    fn a_stalled_link_holds_its_messages_until_released_then_delivers_them_in_order() {
        let mut net = SimNetwork::new(3, 1, false);
        let (r1, r2, r3) = (ReplicaId(1), ReplicaId(2), ReplicaId(3));
        net.stall_link(r1, r2);
        for epoch in 1..=3 {
            assert!(net.send(Millis(0), r2, &env(1, epoch)));
        }
        net.send(Millis(0), r3, &env(1, 9));
        assert!(net.stall_holds(r1, r2, "hello"));
        assert!(!net.is_whole());
        assert_eq!(due(&mut net, Millis(100)), vec![(1, 9)], "only the other link delivers");
        net.release(Millis(100), r1, r2);
        assert_eq!(due(&mut net, Millis(100)), vec![(1, 1), (1, 2), (1, 3)]);
        assert!(net.is_whole());
    }

    #[test]
    fn a_heal_releases_stalled_links_and_a_crash_loses_what_the_sender_stalled() {
        let mut net = SimNetwork::new(3, 1, false);
        let (r1, r2, r3) = (ReplicaId(1), ReplicaId(2), ReplicaId(3));
        net.stall_link(r1, r2);
        net.stall_link(r3, r2);
        net.send(Millis(0), r2, &env(1, 1));
        net.send(Millis(0), r2, &env(3, 3));
        net.forget_stalled_from(r3);
        net.heal(Millis(5));
        assert_eq!(due(&mut net, Millis(5)), vec![(1, 1)]);
        assert!(net.is_whole());
    }
}
