//! Formation (DESIGN §6): a new cluster forms only when all N replicas are up
//! and blank. The highest id sends FORM(cluster id, every incarnation); each
//! replica records it durably and acks; once all N acked, FORMED. Every message
//! carries the sender's formation state, so a replica that missed FORMED
//! completes on meeting any formed peer. Nothing is elected or served before.
//!
//! A blank directory that meets a formed cluster must become a learner (a wiped
//! replica); until learners exist, it waits and says so, and never joins as a
//! full member with an empty log.

use super::message::{Envelope, PeerMsg};
use super::types::{Formation, Millis, ReplicaId};
use super::{Output, Persist, Replica};
use rand::RngExt;
use std::collections::BTreeSet;

/// The highest id's progress while forming.
#[derive(Debug)]
pub(super) struct Forming {
    pub cluster_id: u64,
    pub acks: BTreeSet<ReplicaId>,
    pub sent_at: Millis,
}

impl Replica {
    /// True once this replica's formation is complete.
    pub fn is_formed(&self) -> bool {
        matches!(self.formation, Formation::Complete(_))
    }

    /// Formation timers: Hello while unformed; the highest id drives FORM.
    pub(super) fn tick_formation(&mut self, now: Millis, out: &mut Vec<Output>) {
        if self.is_formed() {
            return;
        }
        let resend_ms = (self.cfg.heartbeat_ms * 5).max(10);
        if now >= self.hello_at {
            self.hello_at = now.plus(resend_ms);
            self.send(self.others(), PeerMsg::Hello, out);
        }
        if self.cfg.id.0 as usize != self.cfg.n || self.blank_in_formed_cluster() {
            return;
        }
        let others = self.others();
        match &mut self.forming {
            None => self.maybe_start_forming(now, out),
            Some(f) => {
                let all_acked = f.acks.len() + 1 == self.cfg.n;
                if all_acked {
                    let id = f.cluster_id;
                    self.complete_formation(now, id, out);
                    self.send(others, PeerMsg::Formed { cluster_id: id }, out);
                } else if now.since(f.sent_at) >= resend_ms {
                    f.sent_at = now;
                    let missing: Vec<ReplicaId> =
                        others.into_iter().filter(|id| !f.acks.contains(id)).collect();
                    let msg = PeerMsg::Form {
                        cluster_id: f.cluster_id,
                        incarnations: self.incarnations.clone(),
                    };
                    self.send(missing, msg, out);
                }
            }
        }
    }

    /// Highest id: when every peer is heard from and blank (or pending the same
    /// cluster id), pick the cluster id and send FORM.
    fn maybe_start_forming(&mut self, now: Millis, out: &mut Vec<Output>) {
        let mut pending: BTreeSet<u64> = BTreeSet::new();
        if let Formation::Pending(id) = self.formation {
            pending.insert(id);
        }
        for p in self.peers.values() {
            if p.heard.is_none() {
                return;
            }
            match p.formation {
                Formation::Blank => {}
                Formation::Pending(id) => {
                    pending.insert(id);
                }
                Formation::Complete(_) => return,
            }
        }
        if pending.len() > 1 {
            crate::qlog!("formation: replicas hold different pending cluster ids {pending:?}");
            return;
        }
        let cluster_id = pending.into_iter().next().unwrap_or_else(|| self.rng.random::<u64>() | 1);
        for (id, p) in &self.peers {
            self.incarnations.insert(*id, p.incarnation);
        }
        self.incarnations.insert(self.cfg.id, self.incarnation);
        out.push(Output::Persist(Persist::Incarnations(self.incarnations.clone())));
        self.formation = Formation::Pending(cluster_id);
        out.push(Output::Persist(Persist::Formation(self.formation)));
        crate::qlog!(
            "formation: all {} replicas blank; forming cluster {cluster_id:016x}",
            self.cfg.n
        );
        let msg = PeerMsg::Form { cluster_id, incarnations: self.incarnations.clone() };
        self.send(self.others(), msg, out);
        self.forming = Some(Forming { cluster_id, acks: BTreeSet::new(), sent_at: now });
    }

    fn complete_formation(&mut self, now: Millis, cluster_id: u64, out: &mut Vec<Output>) {
        self.formation = Formation::Complete(cluster_id);
        self.forming = None;
        out.push(Output::Persist(Persist::Formation(self.formation)));
        crate::qlog!("formation: cluster {cluster_id:016x} formed");
        // Elect soon: everyone was waiting for formation, nobody leads yet.
        let jitter = self.rng.random_range(0..=self.cfg.heartbeat_ms.max(1));
        self.election_deadline = now.plus(jitter);
    }

    /// Every envelope: a pending replica completes on meeting a formed peer of
    /// its cluster.
    pub(super) fn observe_formation(&mut self, now: Millis, env: &Envelope, out: &mut Vec<Output>) {
        if let (Formation::Pending(mine), Formation::Complete(theirs)) =
            (self.formation, env.formation)
        {
            if mine == theirs {
                self.complete_formation(now, mine, out);
            }
        }
        if self.formation == Formation::Blank && matches!(env.formation, Formation::Complete(_)) {
            self.note_blank_in_formed_cluster(env.from);
        }
    }

    fn note_blank_in_formed_cluster(&mut self, from: ReplicaId) {
        if !self.blank_warned {
            self.blank_warned = true;
            crate::qlog!(
                "formation: this data directory is blank but replica {from} belongs to a formed \
                 cluster; this replica will not vote or serve (it needs to rejoin as a learner)"
            );
        }
    }

    fn blank_in_formed_cluster(&self) -> bool {
        self.peers.values().any(|p| matches!(p.formation, Formation::Complete(_)))
            && self.formation == Formation::Blank
    }

    /// FORM, FORM-ACK and FORMED.
    pub(super) fn on_formation_msg(
        &mut self,
        now: Millis,
        from: ReplicaId,
        msg: PeerMsg,
        out: &mut Vec<Output>,
    ) {
        match msg {
            PeerMsg::Form { cluster_id, incarnations } => {
                if from.0 as usize != self.cfg.n {
                    return;
                }
                match self.formation {
                    Formation::Complete(_) => return,
                    Formation::Pending(id) if id != cluster_id => {
                        crate::qlog!("formation: FORM for {cluster_id:016x} but pending {id:016x}");
                        return;
                    }
                    _ => {}
                }
                if self.formation != Formation::Pending(cluster_id) {
                    self.incarnations = incarnations;
                    self.incarnations.insert(self.cfg.id, self.incarnation);
                    out.push(Output::Persist(Persist::Incarnations(self.incarnations.clone())));
                    self.formation = Formation::Pending(cluster_id);
                    out.push(Output::Persist(Persist::Formation(self.formation)));
                }
                self.send(vec![from], PeerMsg::FormAck { cluster_id }, out);
            }
            PeerMsg::FormAck { cluster_id } => {
                if let Some(f) = &mut self.forming {
                    if f.cluster_id == cluster_id {
                        f.acks.insert(from);
                    }
                }
                self.tick_formation(now, out);
            }
            PeerMsg::Formed { cluster_id } if self.formation == Formation::Pending(cluster_id) => {
                self.complete_formation(now, cluster_id, out);
            }
            _ => {}
        }
    }

    /// Why a client request cannot be served yet.
    pub(super) fn formation_wait_detail(&self) -> String {
        if self.blank_in_formed_cluster() {
            return "this replica's data directory is blank but the cluster is formed; \
                    it does not serve until it rejoins"
                .into();
        }
        let heard: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.heard.is_some())
            .map(|(id, _)| id.to_string())
            .collect();
        format!(
            "cluster not formed yet: waiting for all {} replicas (heard from {})",
            self.cfg.n,
            if heard.is_empty() { "none".into() } else { heard.join(",") }
        )
    }
}
