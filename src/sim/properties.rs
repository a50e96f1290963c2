//! Protocol properties as scripted scenarios on a manual-delivery
//! `SimCluster` (DESIGN §3–§5): each test builds the situation a property is
//! about, message by message, and asserts the outcome. The step checkers run
//! throughout, so a scenario also fails on any invariant violation.

use super::cluster::{ClientEvent, CrashPoint, SimCluster, SimConfig};
use crate::client::{Reply, Request};
use crate::protocol::message::PeerMsg;
use crate::protocol::types::{Command, EntryId, Epoch, Incarnation, LogIndex, ReplicaId, ReqId};
use crate::protocol::Input;
use std::collections::BTreeMap;

/// A manual cluster, the replies it gave, and helpers to drive it.
struct Scenario {
    c: SimCluster,
    replies: BTreeMap<ReqId, Reply>,
}

fn r(id: u8) -> ReplicaId {
    ReplicaId(id)
}

impl Scenario {
    fn new(n: usize) -> Scenario {
        Scenario::with(SimConfig::new(n))
    }

    fn with(cfg: SimConfig) -> Scenario {
        let mut c = SimCluster::new(cfg, 7, true);
        c.trace.on = true;
        c.start();
        Scenario { c, replies: BTreeMap::new() }
    }

    /// Time passes on a perfect network: every message is delivered at once.
    fn run(&mut self, ms: u64) {
        for _ in 0..ms {
            self.c.tick(1);
            self.c.deliver_all(None);
        }
        self.check();
    }

    /// Fails with the trace's tail on an invariant violation; collects replies.
    fn check(&mut self) {
        if let Some(v) = &self.c.violation {
            let lines = &self.c.trace.lines;
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            panic!("invariant violated: {v}\n{tail}");
        }
        for ev in self.c.take_events() {
            if let ClientEvent::Reply { req, reply, .. } = ev {
                self.replies.insert(req, reply);
            }
        }
    }

    fn request(&mut self, to: u8, request: Request) -> ReqId {
        let (req, _) = self.c.client_request(r(to), request).expect("replica is up");
        self.check();
        req
    }

    fn put(&mut self, to: u8, key: &str, value: &str) -> ReqId {
        self.request(to, Request::Put { key: key.into(), value: value.as_bytes().to_vec() })
    }

    fn get(&mut self, to: u8, key: &str) -> ReqId {
        self.request(to, Request::Get { key: key.into() })
    }

    fn reply(&mut self, req: ReqId) -> Option<Reply> {
        self.check();
        self.replies.get(&req).cloned()
    }

    /// The serving leader; panics when there is none.
    fn leader(&self) -> u8 {
        self.c.serving_leader().expect("a serving leader").0
    }

    fn commit(&self, id: u8) -> LogIndex {
        self.c.replica(r(id)).expect("up").commit_index()
    }

    /// The entry id replica `id` holds at `index`.
    fn held(&self, id: u8, index: LogIndex) -> Option<EntryId> {
        self.c.replica(r(id)).expect("up").log().get(&index).map(|e| e.id)
    }

    /// Delivers what is queued from `from` to each of `to`; drops it to the rest.
    fn only_to(&mut self, from: u8, to: &[u8]) {
        for id in self.c.ids() {
            if id.0 == from {
                continue;
            }
            if to.contains(&id.0) {
                self.c.deliver_link(r(from), id);
            } else {
                self.c.drop_link(r(from), id);
            }
        }
        self.check();
    }

    fn trace_has(&self, needle: &str) -> bool {
        self.c.trace.lines.iter().any(|l| l.contains(needle))
    }

    /// Crashes `id`, wipes its data directory and restarts it (a learner).
    fn wipe(&mut self, id: u8) {
        self.c.crash(r(id), 0);
        self.c.wipe(r(id));
        self.c.restart(r(id));
        self.check();
    }

    /// Runs until `done` holds, for at most `ms`.
    fn run_until(&mut self, ms: u64, what: &str, done: impl Fn(&SimCluster) -> bool) {
        for _ in 0..ms {
            if done(&self.c) {
                return;
            }
            self.run(1);
        }
        let status: Vec<String> = self
            .c
            .ids()
            .into_iter()
            .map(|id| match self.c.replica(id) {
                Some(x) => format!("r{id}: {}", x.status(self.c.now)),
                None => format!("r{id}: down"),
            })
            .collect();
        let lines = &self.c.trace.lines;
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        panic!("not {what} within {ms}ms:\n{}\n{tail}", status.join("\n"));
    }

    /// Delivers one link's queue at a time (ticking between rounds) until
    /// `done` holds, so the messages of the step that made it hold are still
    /// queued.
    fn hop_until(&mut self, ms: u64, what: &str, done: impl Fn(&SimCluster) -> bool) {
        for _ in 0..ms {
            self.c.tick(1);
            for a in self.c.ids() {
                for b in self.c.ids() {
                    if done(&self.c) {
                        self.check();
                        return;
                    }
                    if a != b {
                        self.c.deliver_link(a, b);
                    }
                }
            }
        }
        panic!("not {what} within {ms}ms");
    }

    /// Runs until `id` is a full member again.
    fn run_until_promoted(&mut self, id: u8) {
        let promoted = |c: &SimCluster| {
            c.replica(r(id)).is_some_and(|x| x.is_formed() && x.role_name() != "learner")
        };
        self.run_until(2000, &format!("r{id} promoted"), promoted);
    }

    /// `id`'s current incarnation.
    fn incarnation(&self, id: u8) -> Incarnation {
        self.c.replica(r(id)).expect("up").incarnation()
    }

    /// No replica records an incarnation of `id` that supersedes its current
    /// one (a replica cut off while it registered may record an older one,
    /// whose messages it drops), and all follow one serving leader.
    fn assert_none_supersedes(&self, id: u8) {
        let current = self.incarnation(id);
        let leader = self.leader();
        for other in self.c.ids() {
            let x = self.c.replica(other).expect("up");
            let recorded = x.incarnations().get(&r(id)).copied().unwrap_or_default();
            assert!(
                recorded == current || recorded.counter < current.counter,
                "r{other} records {recorded} for r{id}, whose incarnation is {current}"
            );
            assert_eq!(x.leader_id(), Some(r(leader)), "r{other} follows r{leader}");
        }
    }
}

fn written(reply: Option<Reply>) -> LogIndex {
    match reply {
        Some(Reply::Written(v)) => LogIndex(v),
        other => panic!("expected OK, got {other:?}"),
    }
}

#[test]
fn a_behind_bully_winner_adopts_the_entry_a_majority_accepted_and_keeps_the_committed_one() {
    let mut s = Scenario::new(5);
    s.run(300);
    assert_eq!(s.leader(), 5);
    // X is accepted by r1 and r2 besides the leader (3 of 5: chosen) and
    // committed at r5 alone: every COMMIT is lost.
    let x = s.put(5, "k", "x");
    s.only_to(5, &[1, 2]);
    s.only_to(1, &[5]);
    s.only_to(2, &[5]);
    let slot = written(s.reply(x));
    s.only_to(5, &[]);
    // Y is accepted by r1 only (not chosen).
    let _y = s.put(5, "k", "y");
    s.only_to(5, &[1]);
    s.only_to(1, &[]);
    // The leader dies; r4, the highest live id, holds neither X nor Y.
    s.c.crash(r(5), 0);
    assert_eq!(s.held(4, slot), None);
    s.run(400);
    assert_eq!(s.leader(), 4, "the highest live id wins");
    let x_id = EntryId { epoch: Epoch(5), index: slot };
    assert_eq!(s.held(4, slot), Some(x_id), "the winner adopted the chosen entry with its id");
    assert!(s.commit(4) >= slot);
    // Whatever the winner did with Y, k reads back as X or Y, never as absent.
    let g = s.get(4, "k");
    s.run(50);
    let seen = s.reply(g);
    assert!(
        seen == Some(Reply::Value(b"x".to_vec())) || seen == Some(Reply::Value(b"y".to_vec())),
        "read {seen:?}"
    );
    // The old leader comes back and agrees (the checker compares every slot).
    s.c.restart(r(5));
    s.run(300);
    assert_eq!(s.held(5, slot), Some(x_id));
    assert_eq!(s.commit(5), s.commit(s.leader()));
}

#[test]
fn an_old_leaders_accept_from_a_lower_epoch_gets_no_votes() {
    let mut s = Scenario::new(3);
    s.run(200);
    assert_eq!(s.leader(), 3);
    // r3 proposes "old" in epoch 3; its ACCEPT to r1 is held back in the
    // network, the one to r2 is lost. Then r3 stops (SIGSTOP).
    let old = s.put(3, "k", "old");
    let held = s.c.take_link(r(3), r(1));
    assert_eq!(held.iter().filter(|m| matches!(m.env.msg, PeerMsg::Accept { .. })).count(), 1);
    s.c.drop_link(r(3), r(2));
    s.c.pause(r(3));
    s.run(400);
    assert_eq!(s.leader(), 2, "r1 and r2 elect r2 (epoch 5)");
    let slot = s.commit(2);
    // The old ACCEPT arrives now: r1 promised epoch 5 and refuses it.
    s.c.deliver_msgs(held);
    s.check();
    assert!(
        s.trace_has("send 1->3: vote e=3 accepted=[] promised=5"),
        "r1 answers the old leader with a refusal naming its promise"
    );
    assert!(
        s.c.replica(r(1)).unwrap().log().values().all(|e| e.command != Command::put("k", b"old")),
        "r1 did not store the old leader's entry"
    );
    // The old leader resumes, hears epoch 5 and steps down; "old" never commits.
    s.c.resume(r(3));
    s.run(300);
    assert!(!matches!(s.reply(old), Some(Reply::Written(_))), "old must not be acknowledged");
    let g = s.get(1, "k");
    s.run(100);
    assert_eq!(s.reply(g), Some(Reply::NotFound));
    let chosen = s.held(2, slot);
    for id in 1..=3 {
        assert_eq!(s.held(id, slot), chosen, "r{id} holds the epoch-5 entry at slot {slot}");
    }
}

#[test]
fn a_read_that_meets_a_pending_entry_retries_and_returns_the_new_value() {
    let mut s = Scenario::new(3);
    s.run(200);
    let p = s.put(3, "k", "v1");
    s.run(30);
    written(s.reply(p));
    // v2 is proposed; only r1 has stored it when r1 starts a read of k: r3's
    // vote for it is lost on the way to r1, and everything r3 sent r2 is
    // late. So r1 holds v2 without knowing it is chosen (pending), r2 has
    // not seen it, and r3 commits it on r1's vote: every pair of answers
    // meets a pending entry or two versions.
    let p2 = s.put(3, "k", "v2");
    let (accept, vote): (Vec<_>, Vec<_>) =
        s.c.take_link(r(3), r(1))
            .into_iter()
            .partition(|m| matches!(m.env.msg, PeerMsg::Accept { .. }));
    assert_eq!((accept.len(), vote.len()), (1, 1));
    let late = s.c.take_link(r(3), r(2));
    s.c.deliver_msgs(accept);
    let g = s.get(1, "k");
    s.check();
    assert_eq!(s.reply(g), None, "no answer while a quorum member is pending");
    // The first round ends (r2 and r3 answer two versions), then r2 catches up.
    s.c.deliver_all(None);
    assert_eq!(s.reply(g), None, "the first round failed");
    s.c.deliver_msgs(late);
    s.run(60);
    written(s.reply(p2));
    assert_eq!(s.reply(g), Some(Reply::Value(b"v2".to_vec())));
    assert!(s.c.replica(r(1)).unwrap().stats.read_retries >= 1, "the read retried");
}

#[test]
fn a_forwarded_write_delivered_again_after_its_dedup_entry_expired_is_not_applied_twice() {
    let mut s = Scenario::new(3);
    s.run(200);
    assert_eq!(s.leader(), 3);
    // r1 forwards a write; a copy of the FORWARD stays behind (bytes a
    // partition holds back, delivered when it heals).
    let first = s.put(1, "k", "old");
    let forward = s.c.take_link(r(1), r(3));
    assert!(forward.iter().any(|m| m.env.msg.name() == "forward"), "{forward:?}");
    s.c.deliver_msgs(forward.clone());
    s.run(20);
    assert!(matches!(s.reply(first), Some(Reply::Written(_))), "{:?}", s.reply(first));
    // Longer than the leader keeps answered forwards, same leader and epoch.
    s.run(2 * s.c.cfg.request_timeout_ms + 500);
    assert_eq!(s.leader(), 3);
    let newer = s.put(3, "k", "new");
    s.run(20);
    let newer_at = written(s.reply(newer));
    s.c.deliver_msgs(forward);
    s.run(50);
    let get = s.get(2, "k");
    s.run(50);
    assert_eq!(s.reply(get), Some(Reply::Value(b"new".to_vec())), "the old write came back");
    assert_eq!(s.commit(3), newer_at, "nothing was proposed after the newer write");
}

#[test]
fn a_follower_answers_its_forwarded_write_on_votes_and_the_leader_reads_past_it() {
    let mut s = Scenario::new(3);
    s.run(200);
    assert_eq!(s.leader(), 3);
    // r1 forwards a write; r3 proposes it. r1 hears r3's vote and has its
    // own: NW=2, so r1 knows the slot is chosen and answers its client,
    // before r3 (whose votes from r1 and r2 are late) knows it.
    let p = s.put(1, "k", "v");
    s.c.deliver_link(r(1), r(3));
    let to_r2 = s.c.take_link(r(3), r(2));
    s.c.deliver_link(r(3), r(1));
    let index = written(s.reply(p));
    assert!(s.commit(3) < index, "the leader does not know yet");
    let late_vote = s.c.take_link(r(1), r(3));
    // A read-index read at the leader (DUMP) must still see the write: it
    // waits for the leader's last index, not its commit index.
    let dump = s.request(3, Request::Dump);
    s.c.deliver_link(r(3), r(1));
    s.c.deliver_link(r(1), r(3));
    assert_eq!(s.reply(dump), None, "heartbeats confirmed, but the write is not applied yet");
    s.c.deliver_msgs(late_vote);
    s.c.deliver_msgs(to_r2);
    s.run(50);
    match s.reply(dump) {
        Some(Reply::Lines(lines)) => {
            assert!(lines.iter().any(|l| l.contains("\"key\":\"k\"")), "dump {lines:?}")
        }
        other => panic!("dump answered {other:?}"),
    }
}

#[test]
fn a_read_does_not_ask_a_stopped_replica_whose_link_is_still_up() {
    let mut s = Scenario::new(3);
    s.run(200);
    assert_eq!(s.leader(), 3);
    let p = s.put(3, "k", "v");
    s.run(30);
    written(s.reply(p));
    // r2 stops (SIGSTOP): its links stay up, but it has been silent for
    // longer than the election timeout, so it is not live.
    s.c.pause(r(2));
    s.run(300);
    for _ in 0..10 {
        let g = s.get(1, "k");
        s.run(5);
        assert_eq!(s.reply(g), Some(Reply::Value(b"v".to_vec())), "answered in one round");
    }
    assert_eq!(s.c.replica(r(1)).unwrap().stats.read_retries, 0, "no round waited for r2");
}

#[test]
fn a_follower_that_missed_accepts_catches_up_by_log() {
    let mut s = Scenario::new(3);
    s.run(200);
    assert_eq!(s.leader(), 3);
    // Three writes commit with r2's votes; every ACCEPT and COMMIT to r1 is lost.
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        let p = s.put(3, k, v);
        s.only_to(3, &[2]);
        s.only_to(2, &[3]);
        written(s.reply(p));
        s.only_to(3, &[2]);
    }
    let behind = s.commit(1);
    assert!(behind < s.commit(3));
    // A heartbeat names the leader's commit index; r1 fetches what it lacks.
    s.run(60);
    let r1 = s.c.replica(r(1)).unwrap();
    assert_eq!(r1.commit_index(), s.commit(3));
    assert_eq!(r1.store(), s.c.replica(r(3)).unwrap().store());
    assert!(r1.stats.caught_up_entries >= 3, "caught up through fetches");
    assert!(s.trace_has("send 1->3: fetch_req"));
}

#[test]
fn a_stale_entry_of_an_older_epoch_is_never_applied_where_another_entry_commits() {
    let mut s = Scenario::new(5);
    s.run(300);
    assert_eq!(s.leader(), 5);
    // X reaches r4 only: held by r4 and r5 in ballot 5, never chosen.
    let _x = s.put(5, "k", "stale");
    s.only_to(5, &[4]);
    s.only_to(4, &[]);
    let slot = s.c.replica(r(5)).unwrap().last_log_index();
    assert!(s.held(4, slot).is_some());
    // The majority side elects r3 and commits other entries at that slot and past it.
    s.c.partition(&[vec![r(4), r(5)], vec![r(1), r(2), r(3)]]);
    s.run(500);
    assert_eq!(s.leader(), 3);
    let w = s.put(3, "k", "fresh");
    s.run(30);
    written(s.reply(w));
    let chosen = s.held(3, slot).expect("slot filled by recovery");
    assert_ne!(Some(chosen), s.held(4, slot), "r4 still holds its stale entry");
    // Heal: r4 and r5 come back holding the stale entry; whoever leads next,
    // they end with the chosen one and never apply the stale one.
    s.c.heal();
    s.run(800);
    let leader = s.leader();
    for id in 1..=5 {
        assert_eq!(s.held(id, slot), Some(chosen), "r{id} slot {slot}");
        assert_eq!(s.commit(id), s.commit(leader), "r{id} caught up");
        let value = s.c.replica(r(id)).unwrap().applied_value("k").map(|(_, v)| v.clone());
        assert_eq!(value, Some(b"fresh".to_vec()), "r{id} never applied the stale entry");
    }
}

#[test]
fn two_winners_never_share_an_epoch() {
    // Two Bully winners at once: r1, cut off from the start, wins alone; r3
    // wins with r2. Each claims only epochs it owns, so they never collide.
    let mut s = Scenario::new(3);
    s.c.partition(&[vec![r(1)], vec![r(2), r(3)]]);
    s.run(400);
    assert_eq!(s.leader(), 3);
    assert!(s.trace_has("r1: role candidate(bully) -> candidate(promises), epoch 0 -> 1"));
    s.c.heal();
    s.run(400);
    s.leader();
    for (epoch, (id, _life)) in s.c.checker.leaders() {
        assert_eq!(epoch.0 % 3, id.0 as u64 % 3, "epoch {epoch} led by r{id}, not its owner");
    }
}

#[test]
fn a_winner_that_dies_after_coordinator_never_reuses_its_epoch() {
    // r3 wins at start-up and dies after k messages, for several k, so it
    // dies right after sending COORDINATOR to some but not all. Its promise was
    // durable before any COORDINATOR left, so after the restart it claims a
    // higher epoch it owns.
    let mut sent_some = false;
    for k in 0..12 {
        let mut s = Scenario::new(3);
        s.c.arm_crash(r(3), CrashPoint::AfterSends(k));
        s.run(150);
        assert!(s.trace_has("r3 killed while sending"), "k={k}");
        let announced =
            s.trace_has("send 3->1: coordinator e=3") != s.trace_has("send 3->2: coordinator e=3");
        sent_some |= announced;
        s.c.restart(r(3));
        s.run(400);
        // If another replica took over meanwhile, it dies, so r3 must win again.
        let other = s.leader();
        if other != 3 {
            s.c.crash(r(other), 0);
            s.run(400);
            s.c.restart(r(other));
            s.run(100);
        }
        assert_eq!(s.leader(), 3, "k={k}");
        let epoch = s.c.replica(r(3)).unwrap().epoch();
        assert!(epoch.0.is_multiple_of(3), "r3 leads epoch {epoch}");
        if announced {
            assert!(epoch > Epoch(3), "k={k}: r3 reused epoch 3 after announcing it");
            assert!(!s.c.checker.leaders().contains_key(&Epoch(3)), "nobody led epoch 3");
        }
    }
    assert!(sent_some, "some run died between two COORDINATOR sends");
}

#[test]
fn a_winner_cut_off_during_its_promise_fsync_may_claim_that_epoch_again() {
    // The power fails while r3 syncs its promise of epoch 3: nothing was
    // sent, nobody heard of epoch 3, so claiming it again after the restart
    // is harmless; epoch 3 still has one leader (r3 in its second life).
    let mut s = Scenario::new(3);
    s.c.arm_crash(r(3), CrashPoint::AtSync { keep: 0 });
    s.run(150);
    assert!(s.trace_has("r3 power cut during fsync"));
    assert!(!s.trace_has("send 3->1: coordinator"), "nothing left before the sync");
    s.c.restart(r(3));
    s.run(400);
    assert_eq!(s.leader(), 3);
    let leaders = s.c.checker.leaders();
    assert_eq!(leaders.get(&Epoch(3)), Some(&(r(3), 1)), "{leaders:?}");
}

#[test]
fn a_learner_promoted_after_a_wipe_tells_the_next_learner_the_counter_to_beat() {
    // r1 comes back wiped while r4 is cut off, so only r2, r3 and r5 record
    // its new incarnation. Then r2 and r3 are wiped in turn: each relearns
    // the table from a majority. r1 is wiped again while r5 is cut off: r2,
    // r3 and r4 answer its Join, and the promoted r2 and r3 must tell it the
    // counter r5 records, or r5 would ignore the new r1 for good.
    let mut s = Scenario::new(5);
    s.run(300);
    s.c.partition(&[vec![r(1), r(2), r(3), r(5)], vec![r(4)]]);
    s.wipe(1);
    s.run_until_promoted(1);
    let first = s.incarnation(1);
    s.c.heal();
    s.run(200);
    for id in [2, 3] {
        s.wipe(id);
        s.run_until_promoted(id);
        s.run(200);
        let table = s.c.replica(r(id)).unwrap().incarnations().clone();
        assert_eq!(table.get(&r(1)), Some(&first), "promoted r{id} relearned r1's incarnation");
    }
    s.c.partition(&[vec![r(1), r(2), r(3), r(4)], vec![r(5)]]);
    s.wipe(1);
    s.run_until_promoted(1);
    let second = s.incarnation(1);
    assert!(second.counter > first.counter, "{second} after {first}");
    s.c.heal();
    s.run(500);
    s.assert_none_supersedes(1);
}

#[test]
fn a_replica_promoted_with_a_counter_that_a_minority_records_otherwise_moves_above_it() {
    // r5 is wiped and picks a new incarnation, but only r1 hears its
    // Register before r5 is wiped again. With r1 cut off, r2, r3 and r4
    // answer the new r5's Join: they record its first incarnation, so it
    // picks the same counter again (another nonce) and is promoted. r1
    // drops its messages as stale once the partition heals, and says so:
    // r5 moves to a higher counter that everyone records.
    let mut s = Scenario::new(5);
    s.run(300);
    s.c.crash(r(5), 0);
    s.c.wipe(r(5));
    s.c.restart(r(5));
    s.hop_until(500, "r5 registering", |c| {
        c.replica(r(5)).is_some_and(|x| x.status(c.now).contains("learning=register"))
    });
    let first = s.incarnation(5);
    let to_r1 = s.c.take_link(r(5), r(1));
    assert!(to_r1.iter().any(|m| matches!(m.env.msg, PeerMsg::Register)));
    s.c.deliver_msgs(to_r1);
    for id in [2, 3, 4] {
        s.c.drop_link(r(5), r(id));
    }
    s.check();
    assert_eq!(s.c.replica(r(1)).unwrap().incarnations().get(&r(5)), Some(&first));
    s.c.partition(&[vec![r(2), r(3), r(4), r(5)], vec![r(1)]]);
    s.wipe(5);
    s.run_until_promoted(5);
    assert_eq!(s.incarnation(5).counter, first.counter, "the same counter, picked again");
    assert_ne!(s.incarnation(5), first);
    s.c.heal();
    s.run(500);
    assert!(s.incarnation(5).counter > first.counter, "r5 moved above r1's record");
    s.assert_none_supersedes(5);
    let recorders = s.c.ids().into_iter().filter(|id| {
        s.c.replica(*id).unwrap().incarnations().get(&r(5)) == Some(&s.incarnation(5))
    });
    assert!(recorders.count() >= 3, "a majority records r5's final incarnation");
}

/// A cluster of `n` blank directories that must form first.
fn unformed(n: usize) -> Scenario {
    Scenario::with(SimConfig { formed: false, ..SimConfig::new(n) })
}

/// Runs until every replica is formed and one leader serves all.
fn run_until_formed_and_led(s: &mut Scenario) {
    let done = |c: &SimCluster| {
        let Some(leader) = c.serving_leader() else { return false };
        c.ids().into_iter().all(|id| {
            c.replica(id).is_some_and(|x| {
                x.is_formed() && x.role_name() != "learner" && x.leader_id() == Some(leader)
            })
        })
    };
    s.run_until(3000, "formed, with one leader followed by all", done);
}

#[test]
fn a_replica_wiped_before_it_acknowledged_form_takes_a_higher_counter_and_the_cluster_forms() {
    // r3 (the highest id) sends FORM; r1's acknowledgement is lost and r1 is
    // wiped. The blank r1 gets FORM again, naming its old incarnation: it
    // moves above it, and r3 asks everyone to record the new table.
    let mut s = unformed(3);
    s.hop_until(500, "FORM sent", |c| {
        c.replica(r(3)).is_some_and(|x| x.status(c.now).contains("cluster=pending"))
    });
    s.c.deliver_link(r(3), r(1));
    s.c.drop_link(r(1), r(3));
    let old = s.incarnation(1);
    s.wipe(1);
    run_until_formed_and_led(&mut s);
    let new = s.incarnation(1);
    assert!(new.counter > old.counter, "{new} after {old}");
    s.assert_none_supersedes(1);
}

#[test]
fn a_former_wiped_before_formation_completes_forms_the_cluster_again() {
    // r3 sends FORM and r1 and r2 record it, but r3 is wiped before it hears
    // their acknowledgements. The blank r3 is told that its old incarnation
    // is recorded, moves above it, and forms the pending cluster again.
    let mut s = unformed(3);
    s.hop_until(500, "FORM sent", |c| {
        c.replica(r(3)).is_some_and(|x| x.status(c.now).contains("cluster=pending"))
    });
    let cluster = s.c.replica(r(3)).unwrap().status(s.c.now);
    for id in [1, 2] {
        s.c.deliver_link(r(3), r(id));
        s.c.drop_link(r(id), r(3));
    }
    let old = s.incarnation(3);
    s.wipe(3);
    run_until_formed_and_led(&mut s);
    assert!(s.incarnation(3).counter > old.counter);
    let pending = cluster.split("cluster=pending:").nth(1).unwrap().split(' ').next().unwrap();
    assert_eq!(s.c.replica(r(1)).unwrap().cluster_id(), u64::from_str_radix(pending, 16).ok());
    s.assert_none_supersedes(3);
}

#[test]
fn a_commit_index_that_jumps_past_the_apply_bound_is_applied_over_several_flushes() {
    use crate::protocol::APPLY_PER_FLUSH_MAX;
    let mut s = Scenario::new(3);
    s.run(200);
    assert_eq!(s.leader(), 3);
    // r1 takes every ACCEPT, stripped of its commit index, and hears no
    // vote, COMMIT or heartbeat from r3: it holds the entries but its
    // commit index stays where it is while r3 and r2 commit them.
    let writes = APPLY_PER_FLUSH_MAX + 300;
    let puts: Vec<ReqId> = (0..writes).map(|i| s.put(3, &format!("k{i}"), "v")).collect();
    let before = s.commit(1);
    let mut heartbeat = None;
    for _ in 0..2000 {
        s.c.tick(1);
        for mut m in s.c.take_link(r(3), r(1)) {
            match &mut m.env.msg {
                PeerMsg::Accept { commit, .. } => {
                    *commit = None;
                    s.c.deliver_msgs(vec![m]);
                }
                PeerMsg::Heartbeat { .. } => heartbeat = Some(m),
                _ => {}
            }
        }
        s.c.deliver_all(None);
        s.check();
        if puts.iter().all(|p| s.replies.contains_key(p) || s.reply(*p).is_some()) {
            break;
        }
    }
    let target = s.commit(3);
    assert!(target.0 >= before.0 + writes, "r3 committed every write (commit {target})");
    assert_eq!(s.commit(1), before, "r1 learned nothing of the commits yet");
    // One heartbeat from after the commits carries r3's commit index: r1's
    // commit index jumps, and one flush applies only the bound of it.
    while heartbeat.as_ref().is_none_or(
        |m| !matches!(m.env.msg, PeerMsg::Heartbeat { progress: Some((c, _)), .. } if c >= target),
    ) {
        s.c.tick(1);
        for m in s.c.take_link(r(3), r(1)) {
            if matches!(m.env.msg, PeerMsg::Heartbeat { .. }) {
                heartbeat = Some(m);
            }
        }
        s.c.deliver_all(None);
    }
    // Stepped by hand, so each flush can be looked at; the outputs are
    // not executed, and the scenario ends here.
    let heartbeat = heartbeat.expect("found above").env;
    let now = s.c.now;
    let r1 = s.c.replica_mut(r(1)).expect("up");
    let mut out = Vec::new();
    r1.step(now, Input::Peer(heartbeat), &mut out);
    r1.flush(now, &mut out);
    assert!(r1.commit_index() >= target, "r1 learned the commit index from the heartbeat");
    assert_eq!(
        r1.applied_index().0,
        before.0 + APPLY_PER_FLUSH_MAX,
        "one flush applies at most the bound"
    );
    assert!(r1.has_backlog(), "the rest waits for the next turn");
    r1.flush(now, &mut out);
    assert_eq!(r1.applied_index(), r1.commit_index(), "the next flush applies the rest");
    assert!(!r1.has_backlog());
    let key = format!("k{}", writes - 1);
    assert!(r1.applied_value(&key).is_some(), "the last write is in r1's store");
}

#[test]
fn with_64_kib_values_every_peer_frame_fits_and_a_winner_far_behind_still_wins() {
    use crate::protocol::types::ENTRY_OVERHEAD_BYTES;
    use crate::protocol::{BATCH_BYTES_MAX, INFLIGHT_BYTES_MAX};
    use crate::wire::{encode_into, FRAME_BYTES_MAX};
    // No snapshot: the log keeps every entry, so a promise could carry them all.
    let mut cfg = SimConfig::new(3);
    cfg.snapshot_every_entries = 1_000_000;
    let mut s = Scenario::with(cfg);
    s.run(200);
    assert_eq!(s.leader(), 3);
    // Delivers every queued message but those to `deaf`, checking that each
    // one encodes into a frame a peer accepts (and an ACCEPT into a batch).
    let mut frame = Vec::new();
    let mut largest = 0;
    let mut step = |s: &mut Scenario, deaf: Option<u8>| {
        s.c.tick(1);
        for a in s.c.ids() {
            for b in s.c.ids() {
                if a == b {
                    continue;
                }
                let msgs = s.c.take_link(a, b);
                for m in &msgs {
                    encode_into(&m.env, &mut frame);
                    largest = largest.max(frame.len());
                    assert!(
                        frame.len() <= FRAME_BYTES_MAX,
                        "{a}->{b}: a {} byte frame",
                        frame.len()
                    );
                    if let PeerMsg::Accept { entries, .. } = &m.env.msg {
                        let bytes: usize = entries.iter().map(|(_, e)| e.size_bytes()).sum();
                        assert!(
                            bytes <= BATCH_BYTES_MAX || entries.len() == 1,
                            "ACCEPT of {bytes} bytes"
                        );
                    }
                }
                if deaf != Some(b.0) {
                    s.c.deliver_msgs(msgs);
                }
            }
        }
        s.check();
    };
    // r2 hears nothing while 1,100 writes of 64 KiB (72 MB) commit with r1.
    let value = "v".repeat(64 * 1024);
    let puts: Vec<ReqId> = (0..1100).map(|i| s.put(3, &format!("k{i:04}"), &value)).collect();
    for _ in 0..5000 {
        if puts.iter().all(|p| s.replies.contains_key(p)) {
            break;
        }
        step(&mut s, Some(2));
        // The leader's window: what it proposed and has not committed.
        let r3 = s.c.replica(r(3)).expect("up");
        let open: usize =
            r3.log().range(r3.commit_index().next()..).map(|(_, e)| e.size_bytes()).sum();
        let one = 64 * 1024 + ENTRY_OVERHEAD_BYTES + 8;
        assert!(open as u64 <= INFLIGHT_BYTES_MAX + one as u64, "{open} bytes in flight");
    }
    for p in &puts {
        written(s.reply(*p));
    }
    let ahead = s.commit(1);
    assert!(s.commit(2).0 + 1100 <= ahead.0, "r2 is far behind");
    // The leader dies. r2 outranks r1, so it wins; r1's promise holds the
    // 1,100 committed entries above r2's commit index, more than a frame,
    // so it carries only a batch of them and r2 fetches the rest.
    s.c.crash(r(3), 0);
    for _ in 0..5000 {
        let r2 = s.c.replica(r(2)).expect("up");
        if s.c.serving_leader() == Some(r(2)) && r2.commit_index() >= ahead {
            break;
        }
        step(&mut s, None);
    }
    assert_eq!(s.c.serving_leader(), Some(r(2)), "r2 won and serves");
    assert!(s.commit(2) >= ahead);
    assert_eq!(s.c.replica(r(2)).unwrap().store(), s.c.replica(r(1)).unwrap().store());
    assert!(largest > BATCH_BYTES_MAX / 2, "the test sent large frames ({largest} bytes)");
}
