//! Cluster mode's heartbeats (schema version 3, `cluster_nodes`): each
//! server writes its row on a timer — the database's clock, its online
//! users and their stamp — and reads back the other servers whose beat is
//! recent by the same clock, so no two machines' clocks are compared. And
//! the names and mutual contacts of users whose presence the heartbeats
//! changed, for the Presence frames (`dispatcher/liveness.rs` decides).

use super::{Batch, Error};
use crate::bus::PresenceStamp;
use crate::config::BEAT_USERS_MAX;
use crate::storage::{NodeBeat, PresenceChange, Reply};

/// How long a server's row outlives its last beat: a server that stopped
/// for good (a renamed node, a test run) leaves one row, deleted after a
/// day by any beat.
const NODE_ROW_RETENTION: &str = "1 day";

/// `Heartbeat`: this server's row is written (clock, users, stamp), rows
/// silent for a day are deleted, and the other servers alive are read —
/// with their users only where the stamp differs from the one `known` for
/// that server (an unchanged list is not sent again).
pub(super) fn heartbeat(
    batch: &mut Batch,
    node_id: &str,
    (stamp, online): (PresenceStamp, &[i64]),
    expire_after_ms: i64,
    known: &[(String, PresenceStamp)],
) -> Result<Reply, Error> {
    batch.execute(
        "INSERT INTO cluster_nodes (node_id, beat_at, run, version, online_users)
         VALUES ($1, now(), $2, $3, $4)
         ON CONFLICT (node_id) DO UPDATE SET beat_at = now(), run = EXCLUDED.run,
             version = EXCLUDED.version, online_users = EXCLUDED.online_users",
        &[&node_id, &stamp.run, &stamp.version, &online],
    )?;
    batch.execute(
        &format!(
            "DELETE FROM cluster_nodes WHERE beat_at < now() - interval '{NODE_ROW_RETENTION}'"
        ),
        &[],
    )?;
    let known_nodes: Vec<&str> = known.iter().map(|(node, _)| node.as_str()).collect();
    let known_runs: Vec<i64> = known.iter().map(|(_, stamp)| stamp.run).collect();
    let known_versions: Vec<i64> = known.iter().map(|(_, stamp)| stamp.version).collect();
    let rows = batch.query(
        "SELECT n.node_id, n.run, n.version,
                CASE WHEN k.run = n.run AND k.version = n.version THEN NULL
                     ELSE n.online_users END
         FROM cluster_nodes n
         LEFT JOIN unnest($3::text[], $4::bigint[], $5::bigint[]) AS k(node_id, run, version)
             ON k.node_id = n.node_id
         WHERE n.node_id <> $1 AND n.beat_at > now() - $2 * interval '1 millisecond'",
        &[
            &node_id,
            &(expire_after_ms as f64),
            &known_nodes,
            &known_runs,
            &known_versions,
        ],
    )?;
    let alive = rows
        .iter()
        .map(|row| {
            let mut online: Option<Vec<i64>> = row.try_get(3)?;
            if let Some(online) = &mut online {
                // Another server's list is bounded by its own connections;
                // a row past the bound (a newer server's?) is cut.
                online.truncate(BEAT_USERS_MAX);
            }
            Ok(NodeBeat {
                node_id: row.try_get(0)?,
                stamp: PresenceStamp {
                    run: row.try_get(1)?,
                    version: row.try_get(2)?,
                },
                online,
            })
        })
        .collect::<Result<Vec<NodeBeat>, Error>>()?;
    Ok(Reply::Beat { result: Ok(alive) })
}

/// `PresenceOf`: each user's name and mutual contacts (one query for all).
pub(super) fn presence_of(batch: &mut Batch, changes: &[(i64, bool)]) -> Result<Reply, Error> {
    let ids: Vec<i64> = changes.iter().map(|(user_id, _)| *user_id).collect();
    let rows = batch.query(
        "SELECT u.user_id, u.username,
                COALESCE(array_agg(c.contact_id) FILTER (WHERE r.owner_id IS NOT NULL), '{}')
         FROM users u
         LEFT JOIN contacts c ON c.owner_id = u.user_id
         LEFT JOIN contacts r ON r.owner_id = c.contact_id AND r.contact_id = c.owner_id
         WHERE u.user_id = ANY($1)
         GROUP BY u.user_id, u.username",
        &[&ids],
    )?;
    let online: std::collections::HashMap<i64, bool> = changes.iter().copied().collect();
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let user_id: i64 = row.try_get(0)?;
        let Some(online) = online.get(&user_id) else {
            continue;
        };
        found.push(PresenceChange {
            user_id,
            username: row.try_get(1)?,
            online: *online,
            mutual_contacts: row.try_get(2)?,
        });
    }
    Ok(Reply::PresenceOf { changes: found })
}

#[cfg(test)]
mod tests {
    use super::super::test_schema::TestSchema;
    use super::super::PostgresBackend;
    use crate::bus::PresenceStamp;
    use crate::storage::{Backend, Command, NodeBeat, Reply};

    /// Writes `node`'s beat; the other servers alive.
    fn beat(
        backend: &mut PostgresBackend,
        node: &str,
        version: i64,
        online: &[i64],
    ) -> Vec<NodeBeat> {
        beat_knowing(backend, node, version, online, vec![])
    }

    /// The same, for a server that has applied the beats in `known`.
    fn beat_knowing(
        backend: &mut PostgresBackend,
        node: &str,
        version: i64,
        online: &[i64],
        known: Vec<(String, PresenceStamp)>,
    ) -> Vec<NodeBeat> {
        let mut replies = backend.execute(vec![Command::Heartbeat {
            node_id: node.into(),
            stamp: PresenceStamp { run: 7, version },
            online: online.to_vec(),
            expire_after_ms: 400,
            known,
        }]);
        match replies.pop() {
            Some(Reply::Beat { result: Ok(alive) }) => alive,
            other => panic!("a heartbeat is answered with the servers alive: {other:?}"),
        }
    }

    /// Each server reads the others' last beats, not its own, with their
    /// users unless it has that beat already; a server whose beat is older
    /// than the expiry (by the database's clock) is not listed.
    #[test]
    fn heartbeats_list_the_other_servers_alive() {
        let Some(schema) = TestSchema::create("heartbeats_list_the_other_servers_alive") else {
            return;
        };
        let mut a = PostgresBackend::open(&schema.url, true).unwrap();
        let mut b = PostgresBackend::open(&schema.url, true).unwrap();
        assert_eq!(beat(&mut a, "a", 1, &[1]), vec![]);
        let from_a = NodeBeat {
            node_id: "a".into(),
            stamp: PresenceStamp { run: 7, version: 1 },
            online: Some(vec![1]),
        };
        assert_eq!(beat(&mut b, "b", 3, &[2, 3]), vec![from_a.clone()]);
        // Known at that stamp: listed without its users.
        let known = vec![("a".to_owned(), from_a.stamp)];
        let again = beat_knowing(&mut b, "b", 3, &[2, 3], known);
        assert_eq!(
            again,
            vec![NodeBeat {
                online: None,
                ..from_a
            }]
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
        // a's beat has expired; b's, read by a, has too.
        assert_eq!(beat(&mut b, "b", 4, &[2]), vec![]);
        let alive = beat(&mut a, "a", 2, &[1]);
        assert_eq!(alive.len(), 1);
        assert_eq!(alive[0].online, Some(vec![2]));
        assert_eq!(alive[0].stamp.version, 4);
    }
}
