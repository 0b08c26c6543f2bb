//! Delivery guarantees through the real binary: a delivered `message_id`
//! names one message forever — ids are reserved durably before they are
//! handed out, so no restart, crash, failed store or deleted group makes the
//! server give an id twice.

mod common;

use std::time::Duration;

use common::{logged_in, message_to, register_all, Client, TestServer};
use protocol::client::{CreateGroup, LeaveGroup, SendMessage};
use protocol::{ClientMessage, ErrorType, ServerMessage};

fn send_and_ack(client: &mut Client, message: ClientMessage) -> i64 {
    client.send(&message);
    loop {
        match client.recv() {
            ServerMessage::Ack(ack) => return ack.message_id,
            ServerMessage::GroupInfo(_) | ServerMessage::Groups(_) => continue,
            other => panic!("expected an Ack, got {other:?}"),
        }
    }
}

fn group_message(group_id: i64, content: &str) -> ClientMessage {
    ClientMessage::Message(SendMessage {
        dest_id: None,
        group_id: Some(group_id),
        content: content.into(),
        message_id: None,
        source_id: None,
        is_encrypted: false,
    })
}

/// A group deleted with its messages (its last member left) leaves its ids
/// used: after a clean restart the next message gets a larger id. (Before
/// reservations the next id was `MAX(message_id) + 1` of what was left.)
#[test]
fn ids_of_a_deleted_group_are_not_reused_after_a_restart() {
    let mut server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let before = send_and_ack(&mut alice, message_to("bob", "before", None));
    alice.send(&ClientMessage::CreateGroup(CreateGroup {
        name: "short-lived".into(),
        members: vec![],
    }));
    let group_id = match alice.recv() {
        ServerMessage::GroupInfo(info) => info.group_id,
        other => panic!("expected GroupInfo, got {other:?}"),
    };
    let group_ids: Vec<i64> = (0..3)
        .map(|i| send_and_ack(&mut alice, group_message(group_id, &format!("g{i}"))))
        .collect();
    assert!(group_ids.iter().all(|id| *id > before));
    alice.send(&ClientMessage::LeaveGroup(LeaveGroup { group_id }));
    assert!(matches!(alice.recv(), ServerMessage::Groups(g) if g.data.is_empty()));
    drop(alice);

    server.restart();
    let mut alice = logged_in(&server, "alice");
    let after = send_and_ack(&mut alice, message_to("bob", "after", None));
    let highest_used = group_ids.iter().max().copied().unwrap_or(before);
    assert!(
        after > highest_used,
        "id {after} handed out again (the deleted group used up to {highest_used})"
    );
}

/// Messages delivered to a live recipient while the disk was full (their
/// sender got `server_busy`) used ids that are not in the database; after a
/// clean restart with the disk freed, no new message gets any of them.
#[test]
fn ids_seen_during_a_full_disk_are_not_reused_after_a_restart() {
    let limit = 2 * 1024 * 1024;
    let mut server = TestServer::start_with_file_size_limit(&["--no-rate-limits"], Some(limit));
    register_all(&server, &["alice", "bob", "carol"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    let padding = "x".repeat(16 * 1024);
    let (mut busy, mut sent) = (0, 0);
    for i in 0..600 {
        sent += 1;
        alice.send(&message_to("bob", &format!("full-{i}-{padding}"), None));
        match alice.recv() {
            ServerMessage::Ack(_) => {}
            ServerMessage::Error(error) => {
                assert_eq!(error.error_type, ErrorType::ServerBusy, "{error:?}");
                busy += 1;
                if busy >= 5 {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(busy > 0, "the disk never filled up");
    let seen: Vec<i64> = bob
        .drain_up_to(sent, Duration::from_secs(10))
        .into_iter()
        .filter_map(|frame| match frame {
            ServerMessage::Message(message) => Some(message.message_id),
            _ => None,
        })
        .collect();
    let highest_seen = seen.iter().max().copied().expect("bob got messages");
    drop((alice, bob));

    server.restart_with_free_disk();
    let mut alice = logged_in(&server, "alice");
    let next = send_and_ack(
        &mut alice,
        message_to("carol", "after the disk was freed", None),
    );
    assert!(
        next > highest_seen,
        "id {next} handed out again: bob already holds a message with id up to {highest_seen}"
    );
}
