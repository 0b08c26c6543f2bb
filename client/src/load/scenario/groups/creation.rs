//! Creating the groups a `groups` run sends to: each by its first member,
//! then waiting until every member has a GroupInfo listing exactly the
//! members wanted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use protocol::client::CreateGroup;
use protocol::{ClientMessage, ServerMessage};

use crate::load::pool::{ConnId, Pool, PoolEvent};
use crate::load::stats::Latency;
use crate::load::{load_error, now_nanos, LoadError};

/// How long one `poll` waits while groups are created.
const SETUP_POLL: Duration = Duration::from_millis(20);

/// The name of group `index` of run `run_id`.
pub fn group_name(run_id: &str, index: usize) -> String {
    format!("g{run_id}_{index}")
}

/// A group to create: its name and its members (username, logged-in
/// connection); the first member creates it.
pub struct Wanted {
    /// Unique in the run.
    pub name: String,
    /// The creator first.
    pub members: Vec<(String, ConnId)>,
}

/// Group-creation latencies, mergeable across shards.
#[derive(Default)]
pub struct Creation {
    /// Wall time of the whole creation flow.
    pub elapsed_secs: f64,
    /// CreateGroup → the creator's GroupInfo.
    pub create: Latency,
    /// CreateGroup → the last member's GroupInfo.
    pub all_members: Latency,
}

impl Creation {
    pub(super) fn merge(&mut self, other: &Creation) {
        self.elapsed_secs = self.elapsed_secs.max(other.elapsed_secs);
        self.create.merge(&other.create);
        self.all_members.merge(&other.all_members);
    }
}

/// One group being created.
#[derive(Default)]
struct Pending {
    /// When its CreateGroup was sent.
    sent_nanos: Option<u64>,
    group_id: Option<i64>,
    /// By member position: GroupInfo received.
    informed: Vec<bool>,
    informed_count: usize,
}

/// Creates `wanted` (at most `concurrency` unfinished at a time) and waits
/// until every member of every group has a GroupInfo listing all members.
/// Returns the group ids in `wanted` order.
///
/// A CreateGroup's request id is its group's index in `wanted`: the
/// creator's GroupInfo answers it and echoes that id, and is the only one
/// that may; every other member's GroupInfo is a push and carries none.
pub fn create_groups(
    pool: &mut Pool,
    wanted: &[Wanted],
    concurrency: usize,
    deadline: Instant,
) -> Result<(Vec<i64>, Creation), LoadError> {
    let started = Instant::now();
    let mut creation = Creation::default();
    let mut pending: Vec<Pending> = wanted
        .iter()
        .map(|group| Pending {
            informed: vec![false; group.members.len()],
            ..Pending::default()
        })
        .collect();
    let by_conn: HashMap<ConnId, (usize, usize)> = wanted
        .iter()
        .enumerate()
        .flat_map(|(group, wanted)| {
            wanted
                .members
                .iter()
                .enumerate()
                .map(move |(position, (_, conn))| (*conn, (group, position)))
        })
        .collect();
    let (mut next, mut done) = (0, 0);
    let mut events = Vec::new();
    while done < wanted.len() {
        while next < wanted.len() && next - done < concurrency.max(1) {
            let group = &wanted[next];
            let (creator, conn) = &group.members[0];
            let message = ClientMessage::CreateGroup(CreateGroup {
                name: group.name.clone(),
                members: group.members[1..].iter().map(|(n, _)| n.clone()).collect(),
            });
            if !pool.send(*conn, &message, next as u64) {
                return Err(load_error(format!("{creator}: connection gone")));
            }
            pending[next].sent_nanos = Some(now_nanos());
            next += 1;
        }
        if Instant::now() >= deadline {
            return Err(load_error(format!(
                "group creation timed out: {done} of {} groups complete",
                wanted.len()
            )));
        }
        events.clear();
        pool.poll(SETUP_POLL, &mut events)
            .map_err(|error| load_error(format!("poll: {error}")))?;
        let now = now_nanos();
        for event in &events {
            let (conn, message, request_id) = match event {
                PoolEvent::Frame(conn, message, request_id) => (conn, message, *request_id),
                PoolEvent::Closed(conn, reason) if by_conn.contains_key(conn) => {
                    return Err(load_error(format!(
                        "group setup: connection closed: {reason}"
                    )))
                }
                _ => continue,
            };
            let Some(&(group, position)) = by_conn.get(conn) else {
                continue;
            };
            // Only the creator's connection asked anything: its CreateGroup.
            let create_id = (position == 0).then_some(group as u64);
            let answers_create = create_id.is_some() && request_id == create_id;
            match message {
                ServerMessage::GroupInfo(info) => {
                    if request_id != create_id {
                        return Err(load_error(format!(
                            "GroupInfo for {:?} to member {position} of {:?} carries request_id \
                             {request_id:?}, expected {create_id:?} (does the server speak \
                             protocol 1.1?)",
                            info.name, wanted[group].name
                        )));
                    }
                    if info.name != wanted[group].name {
                        return Err(load_error(format!(
                            "GroupInfo for {:?} reached a member of {:?}",
                            info.name, wanted[group].name
                        )));
                    }
                    check_members(&wanted[group], &info.members)?;
                    let entry = &mut pending[group];
                    if *entry.group_id.get_or_insert(info.group_id) != info.group_id {
                        return Err(load_error(format!(
                            "group {:?} has two ids: {:?} and {}",
                            info.name, entry.group_id, info.group_id
                        )));
                    }
                    if entry.informed[position] {
                        continue; // a repeat (AddGroupMembers would cause one)
                    }
                    entry.informed[position] = true;
                    entry.informed_count += 1;
                    let sent = entry.sent_nanos.unwrap_or(now);
                    if position == 0 {
                        creation.create.record_nanos(now.saturating_sub(sent));
                    }
                    if entry.informed_count == entry.informed.len() {
                        creation.all_members.record_nanos(now.saturating_sub(sent));
                        done += 1;
                    }
                }
                ServerMessage::Error(error) if answers_create => {
                    return Err(load_error(format!(
                        "CreateGroup refused: {} ({}); does the server support groups?",
                        error.error_type.as_str(),
                        error.detail
                    )));
                }
                ServerMessage::Error(error) => {
                    return Err(load_error(format!(
                        "group setup: an Error answering no CreateGroup (request_id \
                         {request_id:?}): {} ({})",
                        error.error_type.as_str(),
                        error.detail
                    )));
                }
                // Presence, offline pushes and the like.
                _ => {}
            }
        }
    }
    creation.elapsed_secs = started.elapsed().as_secs_f64();
    let ids = pending
        .into_iter()
        .map(|entry| entry.group_id.expect("every group is complete"))
        .collect();
    Ok((ids, creation))
}

/// A GroupInfo must list exactly the wanted members (in any order).
fn check_members(wanted: &Wanted, listed: &[String]) -> Result<(), LoadError> {
    let mut expected: Vec<&str> = wanted.members.iter().map(|(n, _)| n.as_str()).collect();
    let mut got: Vec<&str> = listed.iter().map(String::as_str).collect();
    expected.sort_unstable();
    got.sort_unstable();
    if expected != got {
        return Err(load_error(format!(
            "GroupInfo for {:?} lists {} members, expected {}",
            wanted.name,
            got.len(),
            expected.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_info_must_list_exactly_the_members() {
        let wanted = Wanted {
            name: group_name("abc", 3),
            members: vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)],
        };
        assert_eq!(wanted.name, "gabc_3");
        let listed = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(check_members(&wanted, &listed(&["c", "a", "b"])).is_ok());
        assert!(check_members(&wanted, &listed(&["a", "b"])).is_err());
        assert!(check_members(&wanted, &listed(&["a", "b", "d"])).is_err());
    }
}
