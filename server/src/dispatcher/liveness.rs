//! Cluster mode: which users are online on the other servers, and whether
//! those servers are alive ([`Liveness`], pure bookkeeping: the dispatcher
//! feeds it and acts on what it answers).
//!
//! Two sources, one order. The bus brings each server's Presence changes
//! at once; the database brings each server's heartbeat — the users online
//! there at that moment — every `beat_every` (`config::LivenessTimes`).
//! Both carry the server's [`PresenceStamp`] (its run, then a version it
//! raises at each Presence it publishes), and what is older than what a
//! server's entry already holds is ignored, so a late heartbeat never
//! undoes a newer Presence and a missed Presence is repaired by the next
//! heartbeat. A server absent from a heartbeat's answer (no beat within
//! `expire_after`, by the database's clock) is dead: its users are offline
//! here. Not while the database itself was unreachable, though: after a
//! failed beat nobody is expired until this server has beaten without a
//! failure for `expire_after` again, so that the others had their chance
//! to beat too. A NATS outage alone expires nobody: heartbeats do not go
//! over the bus.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::bus::PresenceStamp;
use crate::config::LivenessTimes;
use crate::storage::{Command, NodeBeat};

/// This server's view of the others (see the module docs).
pub(super) struct Liveness {
    node_id: String,
    times: LivenessTimes,
    /// This server's stamp: its run and the version of its last Presence.
    own: PresenceStamp,
    /// When the next heartbeat is due (`None`: at once).
    next_beat: Option<Instant>,
    /// A heartbeat was sent then and is not answered yet.
    in_flight_since: Option<Instant>,
    /// Since when every heartbeat was answered without a failure.
    beating_since: Option<Instant>,
    /// Why the last heartbeat failed, if it did.
    failure: Option<String>,
    /// The other servers heard of, by node id.
    nodes: HashMap<String, RemoteNode>,
}

/// Another server as far as its news went.
struct RemoteNode {
    /// The newest news applied.
    stamp: PresenceStamp,
    /// A heartbeat's answer has listed it alive (else it is known from the
    /// bus only: it may not have beaten yet).
    listed: bool,
    /// When this server first heard of it.
    first_heard: Instant,
    /// The stamp of its last beat whose users this server read: the
    /// database sends them again only when its stamp has changed.
    beat_stamp: Option<PresenceStamp>,
    /// Its users online.
    users: HashSet<i64>,
}

impl RemoteNode {
    fn new(now: Instant) -> RemoteNode {
        RemoteNode {
            stamp: PresenceStamp::default(),
            listed: false,
            first_heard: now,
            beat_stamp: None,
            users: HashSet::new(),
        }
    }
}

/// What a heartbeat's answer changes, worked out before it is applied.
struct Plan {
    /// Servers whose heartbeat (with its users) is newer than what is
    /// known of them.
    updates: Vec<NodeBeat>,
    /// Servers listed alive (their beat applied or not), with the stamp of
    /// the beat and whether its users came with it.
    listed: HashMap<String, (PresenceStamp, bool)>,
    /// Servers to drop as dead.
    expired: Vec<String>,
}

impl Liveness {
    /// The view of the server `node_id`, started at `run` (Unix
    /// milliseconds), with the heartbeat times of its `--timeout`.
    pub(super) fn new(node_id: String, run: i64, times: LivenessTimes) -> Liveness {
        Liveness {
            node_id,
            times,
            own: PresenceStamp { run, version: 0 },
            next_beat: None,
            in_flight_since: None,
            beating_since: None,
            failure: None,
            nodes: HashMap::new(),
        }
    }

    /// The stamp of the next Presence this server publishes.
    pub(super) fn next_stamp(&mut self) -> PresenceStamp {
        self.own.version += 1;
        self.own
    }

    /// Whether a heartbeat is due at `now`: its time has come and the last
    /// one is answered (or went unanswered for `expire_after`).
    pub(super) fn beat_due(&self, now: Instant) -> bool {
        let answered = self
            .in_flight_since
            .is_none_or(|sent| now.duration_since(sent) >= self.times.expire_after);
        answered && self.next_beat.is_none_or(|at| now >= at)
    }

    /// The heartbeat command, with this server's users `online`.
    pub(super) fn beat(&mut self, now: Instant, online: Vec<i64>) -> Command {
        self.next_beat = Some(now + self.times.beat_every);
        self.in_flight_since = Some(now);
        let known = self
            .nodes
            .iter()
            .filter_map(|(node_id, node)| Some((node_id.clone(), node.beat_stamp?)))
            .collect();
        Command::Heartbeat {
            node_id: self.node_id.clone(),
            stamp: self.own,
            online,
            expire_after_ms: i64::try_from(self.times.expire_after.as_millis()).unwrap_or(i64::MAX),
            known,
        }
    }

    /// The heartbeat could not be queued (storage is full): it is tried
    /// again at the next tick.
    pub(super) fn beat_not_sent(&mut self) {
        self.in_flight_since = None;
        self.next_beat = None;
    }

    /// Beat at the next chance (the bus may have missed news).
    pub(super) fn beat_soon(&mut self) {
        self.next_beat = None;
    }

    /// Whether another server has `user_id` online, as far as this one
    /// knows.
    pub(super) fn elsewhere(&self, user_id: i64) -> bool {
        self.nodes
            .values()
            .any(|node| node.users.contains(&user_id))
    }

    /// A Presence from `node`: applied (and `true`) unless this server
    /// already has newer news of it.
    pub(super) fn heard(
        &mut self,
        node: &str,
        stamp: PresenceStamp,
        (user_id, online): (i64, bool),
        now: Instant,
    ) -> bool {
        let entry = self
            .nodes
            .entry(node.to_owned())
            .or_insert_with(|| RemoteNode::new(now));
        if stamp <= entry.stamp {
            return false;
        }
        if stamp.run != entry.stamp.run {
            // A new life of that server: the old one's users are gone.
            entry.users.clear();
        }
        entry.stamp = stamp;
        if online {
            entry.users.insert(user_id);
        } else {
            entry.users.remove(&user_id);
        }
        true
    }

    /// The database answered a heartbeat (`Ok`: the other servers alive,
    /// with their users). Returns the users whose being online elsewhere
    /// changed, each with whether they now are.
    pub(super) fn beat_answered(
        &mut self,
        result: Result<Vec<NodeBeat>, String>,
        now: Instant,
    ) -> Vec<(i64, bool)> {
        self.in_flight_since = None;
        let alive = match result {
            Ok(alive) => alive,
            Err(why) => {
                if self.failure.is_none() {
                    log::error!("cluster: heartbeat failed ({why}); nobody is expired meanwhile");
                }
                self.failure = Some(why);
                self.beating_since = None;
                return Vec::new();
            }
        };
        if self.failure.take().is_some() {
            log::warn!("cluster: heartbeats written again");
        }
        let plan = self.plan(alive, now);
        let mut touched = HashSet::new();
        for beat in &plan.updates {
            let old = self.nodes.get(&beat.node_id).map(|node| &node.users);
            let new: HashSet<i64> = beat.online.iter().flatten().copied().collect();
            touched.extend(
                new.iter()
                    .filter(|u| old.is_none_or(|old| !old.contains(u))),
            );
            touched.extend(old.into_iter().flatten().filter(|u| !new.contains(u)));
        }
        for node_id in &plan.expired {
            touched.extend(self.nodes[node_id].users.iter().copied());
        }
        let before: Vec<(i64, bool)> = touched
            .into_iter()
            .map(|user_id| (user_id, self.elsewhere(user_id)))
            .collect();
        self.apply(plan, now);
        before
            .into_iter()
            .filter_map(|(user_id, was)| {
                let is = self.elsewhere(user_id);
                (was != is).then_some((user_id, is))
            })
            .collect()
    }

    /// What `alive` changes: newer beats to apply, and the servers to
    /// expire (none unless heartbeats have gone through for `expire_after`).
    fn plan(&mut self, alive: Vec<NodeBeat>, now: Instant) -> Plan {
        let beating_since = *self.beating_since.get_or_insert(now);
        let may_expire = now.duration_since(beating_since) >= self.times.expire_after;
        let listed: HashMap<String, (PresenceStamp, bool)> = alive
            .iter()
            .map(|beat| (beat.node_id.clone(), (beat.stamp, beat.online.is_some())))
            .collect();
        let updates = alive
            .into_iter()
            .filter(|beat| {
                beat.online.is_some()
                    && self
                        .nodes
                        .get(&beat.node_id)
                        .is_none_or(|node| beat.stamp >= node.stamp)
            })
            .collect();
        let expire_after = self.times.expire_after;
        let expired = self
            .nodes
            .iter()
            .filter(|(node_id, node)| {
                may_expire
                    && !listed.contains_key(*node_id)
                    && (node.listed || now.duration_since(node.first_heard) >= expire_after)
            })
            .map(|(node_id, _)| node_id.clone())
            .collect();
        Plan {
            updates,
            listed,
            expired,
        }
    }

    fn apply(&mut self, plan: Plan, now: Instant) {
        for (node_id, (stamp, with_users)) in &plan.listed {
            if let Some(node) = self.nodes.get_mut(node_id) {
                node.listed = true;
                if *with_users {
                    node.beat_stamp = Some(*stamp);
                }
            }
        }
        for beat in plan.updates {
            let node = self
                .nodes
                .entry(beat.node_id.clone())
                .or_insert_with(|| RemoteNode::new(now));
            let users: HashSet<i64> = beat.online.into_iter().flatten().collect();
            if !node.listed {
                log::info!(
                    "cluster: node {} is alive, {} users online there",
                    beat.node_id,
                    users.len()
                );
            }
            node.listed = true;
            node.stamp = beat.stamp;
            node.beat_stamp = Some(beat.stamp);
            node.users = users;
        }
        for node_id in plan.expired {
            if let Some(node) = self.nodes.remove(&node_id) {
                log::warn!(
                    "cluster: node {node_id} gave no heartbeat for {:?}: its {} users are \
                     offline here",
                    self.times.expire_after,
                    node.users.len()
                );
            }
        }
    }

    /// Whether the database answers heartbeats: the last one did not fail
    /// and none has waited for an answer longer than `expire_after`.
    pub(super) fn database_ok(&self, now: Instant) -> bool {
        let waiting_too_long = self
            .in_flight_since
            .is_some_and(|sent| now.duration_since(sent) >= self.times.expire_after);
        self.failure.is_none() && !waiting_too_long
    }

    /// This server's node id.
    pub(super) fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Other servers known alive (or heard of on the bus).
    pub(super) fn nodes(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TIMES: LivenessTimes = LivenessTimes {
        beat_every: Duration::from_secs(1),
        expire_after: Duration::from_secs(3),
    };

    fn stamp(run: i64, version: i64) -> PresenceStamp {
        PresenceStamp { run, version }
    }

    fn beat(node: &str, stamp: PresenceStamp, online: &[i64]) -> NodeBeat {
        NodeBeat {
            node_id: node.into(),
            stamp,
            online: Some(online.to_vec()),
        }
    }

    /// A heartbeat tells a newcomer who is online elsewhere; a newer
    /// Presence wins over a heartbeat older than it, and the next
    /// heartbeat repairs a Presence the bus missed.
    #[test]
    fn heartbeats_and_presence_converge_in_stamp_order() {
        let t0 = Instant::now();
        let mut view = Liveness::new("a".into(), 1, TIMES);
        let changed = view.beat_answered(Ok(vec![beat("b", stamp(5, 3), &[10, 11])]), t0);
        let mut changed_sorted = changed.clone();
        changed_sorted.sort();
        assert_eq!(changed_sorted, vec![(10, true), (11, true)]);
        // 11 leaves (version 4); a heartbeat taken before (version 3) is
        // ignored, one taken after applies.
        assert!(view.heard("b", stamp(5, 4), (11, false), t0));
        assert!(!view.elsewhere(11));
        assert!(view
            .beat_answered(Ok(vec![beat("b", stamp(5, 3), &[10, 11])]), t0)
            .is_empty());
        assert!(!view.elsewhere(11));
        // Version 5 (12 came) was missed on the bus: the next beat has it.
        let changed = view.beat_answered(Ok(vec![beat("b", stamp(5, 5), &[10, 12])]), t0);
        assert_eq!(changed, vec![(12, true)]);
        // An old Presence is ignored.
        assert!(!view.heard("b", stamp(5, 2), (13, true), t0));
        // The next beat asks for b's users only past the stamp it read.
        let Command::Heartbeat { known, .. } = view.beat(t0, vec![]) else {
            unreachable!("a beat is a Heartbeat");
        };
        assert_eq!(known, vec![("b".to_owned(), stamp(5, 5))]);
        let unchanged = NodeBeat {
            online: None,
            ..beat("b", stamp(5, 5), &[])
        };
        assert!(view.beat_answered(Ok(vec![unchanged]), t0).is_empty());
        assert!(view.elsewhere(10) && view.elsewhere(12));
    }

    /// A server missing from the answers is expired only once this one has
    /// beaten for `expire_after`, and never while the database fails.
    #[test]
    fn a_silent_server_expires_unless_the_database_was_down() {
        let t0 = Instant::now();
        let mut view = Liveness::new("a".into(), 1, TIMES);
        view.beat_answered(Ok(vec![beat("b", stamp(5, 1), &[10])]), t0);
        // Not listed, but this server has not beaten for expire_after yet.
        assert!(view
            .beat_answered(Ok(vec![]), t0 + Duration::from_secs(1))
            .is_empty());
        assert!(view.elsewhere(10));
        // The database fails: nothing expires, and after it is back the
        // others get expire_after to beat.
        assert!(view
            .beat_answered(Err("down".into()), t0 + Duration::from_secs(4))
            .is_empty());
        assert!(!view.database_ok(t0 + Duration::from_secs(4)));
        assert!(view
            .beat_answered(Ok(vec![]), t0 + Duration::from_secs(5))
            .is_empty());
        assert!(view.database_ok(t0 + Duration::from_secs(5)));
        assert!(view.elsewhere(10));
        let changed = view.beat_answered(Ok(vec![]), t0 + Duration::from_secs(8));
        assert_eq!(changed, vec![(10, false)]);
        assert_eq!(view.nodes(), 0);
    }

    /// A restarted server (a new run) starts from nothing: its previous
    /// life's users are not online there any more.
    #[test]
    fn a_new_run_forgets_the_old_one_s_users() {
        let t0 = Instant::now();
        let mut view = Liveness::new("a".into(), 1, TIMES);
        assert!(view.heard("b", stamp(5, 9), (10, true), t0));
        assert!(view.heard("b", stamp(6, 1), (11, true), t0));
        assert!(!view.elsewhere(10));
        assert!(view.elsewhere(11));
    }

    /// Beats are due every `beat_every`, one in flight at a time, unless
    /// an answer never comes; `beat_soon` brings the next forward.
    #[test]
    fn beats_are_paced_and_one_at_a_time() {
        let t0 = Instant::now();
        let mut view = Liveness::new("a".into(), 1, TIMES);
        assert!(view.beat_due(t0));
        let command = view.beat(t0, vec![1, 2]);
        assert!(matches!(command, Command::Heartbeat { ref online, .. } if online == &[1, 2]));
        assert!(!view.beat_due(t0 + Duration::from_secs(2)), "in flight");
        assert!(view.beat_due(t0 + Duration::from_secs(3)), "unanswered");
        view.beat_answered(Ok(vec![]), t0);
        view.beat(t0, vec![]);
        view.beat_answered(Ok(vec![]), t0);
        assert!(!view.beat_due(t0));
        view.beat_soon();
        assert!(view.beat_due(t0));
        view.beat(t0, vec![]);
        view.beat_not_sent();
        assert!(
            view.beat_due(t0),
            "a beat the storage queue refused is retried"
        );
        assert_eq!(view.next_stamp(), stamp(1, 1));
    }
}
