//! Delivery guarantees through the real binary (protocol 1.1): a delivered
//! `message_id` names one message forever; a receipts device gets everything
//! past its confirmation whatever happens to its connection; a device without
//! receipts loses nothing the server had not finished writing to it; every
//! way out of a connection goes through one departure path.

mod common;

use std::time::Duration;

use std::collections::BTreeSet;

use common::{group_message, logged_in, message_to, register_all, Client, TestServer};
use protocol::client::{CreateGroup, LeaveGroup, Logout};
use protocol::{ClientMessage, ErrorType, ServerMessage};

/// An offline queue of 60 KiB messages larger than loopback's socket buffers
/// take, so a login whose client does not read stays in progress.
const QUEUED: usize = 300;
/// Messages held for that login in progress, 60 KiB each: more than the
/// socket buffers and the 1 MiB output cap together.
const HELD: usize = 250;

/// Receives exactly `count` delivered messages (skipping other frames).
#[track_caller]
fn recv_messages(client: &mut Client, count: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    while ids.len() < count {
        if let ServerMessage::Message(message) = client.recv() {
            ids.push(message.message_id);
        }
    }
    ids
}

/// Sends a Ping and reads up to its Pong: everything sent before it has been
/// handled. Returns the ids of the messages that arrived meanwhile.
#[track_caller]
fn ping_through(client: &mut Client) -> Vec<i64> {
    client.send(&ClientMessage::Ping);
    let mut ids = Vec::new();
    loop {
        match client.recv() {
            ServerMessage::Pong => return ids,
            ServerMessage::Message(message) => ids.push(message.message_id),
            _ => {}
        }
    }
}

/// Makes `a` (logged in on `a_client`) and `b` mutual contacts, so `a` is
/// told when `b` comes and goes.
fn befriend(server: &TestServer, a_client: &mut Client, a: &str, b: &str) {
    let user = |name: &str| protocol::client::UserRef {
        username: name.into(),
    };
    a_client.send(&ClientMessage::AddContact(user(b)));
    a_client.recv_directory();
    let mut b_client = logged_in(server, b);
    b_client.send(&ClientMessage::AddContact(user(a)));
    b_client.recv_directory();
    drop(b_client);
    loop {
        match a_client.recv() {
            ServerMessage::Presence(p) if p.username == b && !p.online => return,
            _ => continue,
        }
    }
}

/// Creates a group of `creator` and `members`; returns its id.
fn create_group(creator: &mut Client, members: &[&str]) -> i64 {
    creator.send(&ClientMessage::CreateGroup(CreateGroup {
        name: "team".into(),
        members: members.iter().map(|m| m.to_string()).collect(),
    }));
    match creator.recv() {
        ServerMessage::GroupInfo(info) => info.group_id,
        other => panic!("expected GroupInfo, got {other:?}"),
    }
}

fn send_and_ack(client: &mut Client, message: ClientMessage) -> i64 {
    client.send(&message);
    loop {
        match client.recv() {
            ServerMessage::Ack(ack) => return ack.message_id,
            ServerMessage::GroupInfo(_) | ServerMessage::Groups(_) | ServerMessage::Presence(_) => {
                continue
            }
            other => panic!("expected an Ack, got {other:?}"),
        }
    }
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

/// While the disk is full, a live recipient gets only messages that were
/// stored (delivery follows the commit: no message is handed out and then
/// refused to its sender); and after a restart with the disk freed, no new
/// message gets an id anyone has seen.
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
    server.stop_gracefully();
    let stored: BTreeSet<i64> = server.stored_messages().into_keys().collect();
    let not_kept: Vec<&i64> = seen.iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        not_kept.is_empty(),
        "bob holds messages the server did not keep: {not_kept:?}"
    );

    server.start_again_with_free_disk();
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

/// A receipts device that resumes its session is pushed everything addressed
/// to the user past its last confirmation, in order — however the previous
/// connection ended — and nothing it confirmed.
#[test]
fn a_receipts_session_resumes_from_its_confirmation() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = server.client();
    let session = bob
        .login_with_receipts("bob")
        .session_id
        .expect("a session id");
    let sent: Vec<i64> = (0..4)
        .map(|i| send_and_ack(&mut alice, message_to("bob", &format!("m{i}"), None)))
        .collect();
    assert_eq!(recv_messages(&mut bob, 4), sent);
    bob.confirm(sent[1]);
    drop(bob); // the connection dies; two messages were never confirmed

    let mut bob = server.client();
    bob.resume_with_receipts("bob", &session);
    assert_eq!(recv_messages(&mut bob, 2), sent[2..]);
    bob.confirm(sent[3]);
    ping_through(&mut bob); // the confirmation is handled before the Pong
    drop(bob);

    let mut bob = server.client();
    bob.resume_with_receipts("bob", &session);
    bob.expect_silence(Duration::from_millis(300));
}

/// A confirmation takes messages off the offline queue (a new device does
/// not get them again) and earns the sender a Delivered receipt (37).
#[test]
fn confirmed_messages_are_taken_and_their_sender_is_told() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = server.client();
    alice.login_with_receipts("alice");
    let mut bob = server.client();
    bob.login_with_receipts("bob");
    let sent: Vec<i64> = (0..3)
        .map(|i| send_and_ack(&mut alice, message_to("bob", &format!("m{i}"), None)))
        .collect();
    assert_eq!(recv_messages(&mut bob, 3), sent);
    bob.confirm(sent[2]);
    match alice.recv() {
        ServerMessage::Delivered(receipt) => {
            assert_eq!(
                (receipt.username.as_str(), receipt.through),
                ("bob", sent[2])
            );
        }
        other => panic!("expected Delivered, got {other:?}"),
    }
    let mut phone = logged_in(&server, "bob");
    phone.expect_silence(Duration::from_millis(300));
}

/// A device without receipts takes nothing it was not sent: messages that
/// reached only a receipts device (unconfirmed) are in the next password
/// login's offline queue.
#[test]
fn unconfirmed_messages_stay_queued_for_other_devices() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = server.client();
    bob.login_with_receipts("bob");
    let id = send_and_ack(&mut alice, message_to("bob", "unconfirmed", None));
    assert_eq!(recv_messages(&mut bob, 1), [id]);
    let mut laptop = logged_in(&server, "bob");
    assert_eq!(recv_messages(&mut laptop, 1), [id]);
}

/// Two receipts devices logging in at the same moment each get the whole
/// offline queue: taking it marks nothing, and for a receipts device only a
/// confirmation does. (Before, each take marked its chunk delivered, so two
/// logins split a long queue between them.)
#[test]
fn two_devices_logging_in_at_once_each_get_the_whole_queue() {
    let server = TestServer::start(&["--no-rate-limits"]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let padding = "p".repeat(8 * 1024);
    let sent: Vec<i64> = (0..150)
        .map(|i| {
            send_and_ack(
                &mut alice,
                message_to("bob", &format!("q{i}-{padding}"), None),
            )
        })
        .collect();
    let mut phone = server.client();
    let mut laptop = server.client();
    for device in [&mut phone, &mut laptop] {
        device.send(&ClientMessage::Login(protocol::client::Login {
            username: "bob".into(),
            secret: Some(common::SECRET.into()),
            session_id: None,
            receipts: true,
        }));
    }
    assert_eq!(recv_messages(&mut phone, sent.len()), sent);
    assert_eq!(recv_messages(&mut laptop, sent.len()), sent);
}

/// A message sent to a user whose only connection is closing (here: right
/// after its Logout was answered) is not counted as delivered to it: the next
/// login gets it.
#[test]
fn a_closing_connection_is_no_longer_a_recipient() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    bob.send(&ClientMessage::Logout(Logout::default()));
    assert!(matches!(bob.recv(), ServerMessage::SuccessLogout(_)));
    let id = send_and_ack(&mut alice, message_to("bob", "while closing", None));
    let mut again = logged_in(&server, "bob");
    assert_eq!(recv_messages(&mut again, 1), [id]);
}

/// A member that does not read while 12 MB of group messages arrive is not
/// closed (it is sent only what its output budget holds; the rest waits in
/// storage), and once it reads it gets every acked message, in order.
/// (Before, it was closed as a slow consumer and its group cursor jumped
/// past everything.)
#[test]
fn a_group_member_that_stops_reading_gets_everything_when_it_reads_again() {
    let server = TestServer::start(&["--no-rate-limits"]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    let group_id = create_group(&mut alice, &["bob"]);
    assert!(matches!(bob.recv(), ServerMessage::GroupInfo(_)));
    let padding = "g".repeat(60 * 1024);
    let mut acked = Vec::new();
    for i in 0..200 {
        acked.push(send_and_ack(
            &mut alice,
            group_message(group_id, &format!("{i}-{padding}")),
        ));
    }
    assert_eq!(recv_messages(&mut bob, acked.len()), acked);
    assert!(!server.log_text().contains("slow consumer"));
}

/// A legacy connection that dies while its offline queue is pushed: the next
/// login is pushed the rest of the queue — group and 1:1 messages alike, as
/// one unbroken run up to the end. (Before, the group cursor jumped past
/// what was not pushed.) With receipts, nothing at all is lost.
#[test]
fn a_login_dropped_mid_queue_leaves_the_rest_queued() {
    let server = TestServer::start(&["--no-rate-limits"]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    let group_id = create_group(&mut alice, &["bob"]);
    drop(bob);
    let padding = "q".repeat(60 * 1024);
    let mut queued = Vec::new();
    for i in 0..30 {
        queued.push(send_and_ack(
            &mut alice,
            group_message(group_id, &format!("g{i}-{padding}")),
        ));
        queued.push(send_and_ack(
            &mut alice,
            message_to("bob", &format!("d{i}-{padding}"), None),
        ));
    }
    // A receipts device reads five, confirms them, and drops.
    bob = server.client();
    let session = bob
        .login_with_receipts("bob")
        .session_id
        .expect("a session id");
    let first = recv_messages(&mut bob, 5);
    assert_eq!(first, queued[..5]);
    bob.confirm(first[4]);
    ping_through(&mut bob);
    drop(bob);
    let mut bob = server.client();
    bob.resume_with_receipts("bob", &session);
    assert_eq!(
        recv_messages(&mut bob, queued.len() - 5),
        queued[5..],
        "receipts lose nothing"
    );
    drop(bob);

    // A legacy device reads five and drops; the next login gets a suffix of
    // the queue with both kinds of message, without gaps.
    // (The receipts device confirmed the first five: they are taken.)
    let mut legacy = logged_in(&server, "bob");
    assert_eq!(recv_messages(&mut legacy, 5), queued[5..10]);
    drop(legacy);
    let mut again = logged_in(&server, "bob");
    let last = *queued.last().expect("a queue");
    let mut rest = Vec::new();
    while rest.last() != Some(&last) {
        rest.extend(recv_messages(&mut again, 1));
    }
    let start = queued
        .iter()
        .position(|id| Some(id) == rest.first())
        .expect("the next login gets the rest of the queue");
    assert_eq!(
        rest,
        queued[start..],
        "an unbroken run to the end of the queue"
    );
    assert!(
        start < queued.len() - 2,
        "both kinds come back (from index {start})"
    );
}

/// A resend with the same client `message_id` (after a lost Ack, on a new
/// connection) is acked with the first message's id, stored once and
/// delivered once.
#[test]
fn a_resent_client_id_is_stored_and_delivered_once() {
    let mut server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut bob = logged_in(&server, "bob");
    let mut alice = logged_in(&server, "alice");
    let first = send_and_ack(&mut alice, message_to("bob", "once", Some("c-42")));
    drop(alice);
    let mut alice = logged_in(&server, "alice");
    let again = send_and_ack(&mut alice, message_to("bob", "once", Some("c-42")));
    assert_eq!(again, first, "the resend is acked with the first id");
    let other = send_and_ack(&mut alice, message_to("bob", "twice", Some("c-43")));
    assert!(other > first);
    assert_eq!(recv_messages(&mut bob, 2), [first, other], "delivered once");
    drop((alice, bob));
    server.stop_gracefully();
    let stored: BTreeSet<i64> = server.stored_messages().into_keys().collect();
    assert!(stored.contains(&first) && stored.contains(&other));
    assert_eq!(stored.len(), 2, "stored once: {stored:?}");
}

/// A receipts device's confirmation earns the sender a Delivered receipt even
/// when another device of the recipient, without receipts, had already read
/// the message.
#[test]
fn delivered_receipts_come_even_when_a_legacy_device_took_the_message() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = server.client();
    alice.login_with_receipts("alice");
    let mut phone = server.client();
    phone.login_with_receipts("bob");
    let mut laptop = logged_in(&server, "bob");
    let id = send_and_ack(&mut alice, message_to("bob", "hi", None));
    assert_eq!(recv_messages(&mut laptop, 1), [id]);
    assert_eq!(recv_messages(&mut phone, 1), [id]);
    phone.confirm(id);
    match alice.recv() {
        ServerMessage::Delivered(receipt) => assert_eq!(receipt.through, id),
        other => panic!("expected Delivered, got {other:?}"),
    }
}

/// A receipts session resumed after its user joined a group is not pushed
/// the group's messages from before the join.
#[test]
fn a_resume_does_not_push_group_messages_from_before_joining() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob", "carol"]);
    let mut bob = server.client();
    let session = bob
        .login_with_receipts("bob")
        .session_id
        .expect("a session id");
    drop(bob);
    let mut alice = logged_in(&server, "alice");
    let group_id = create_group(&mut alice, &["carol"]);
    send_and_ack(&mut alice, group_message(group_id, "before bob joined"));
    alice.send(&ClientMessage::AddGroupMembers(
        protocol::client::AddGroupMembers {
            group_id,
            members: vec!["bob".into()],
        },
    ));
    assert!(matches!(alice.recv(), ServerMessage::GroupInfo(_)));
    let after = send_and_ack(&mut alice, group_message(group_id, "after bob joined"));
    let mut bob = server.client();
    bob.resume_with_receipts("bob", &session);
    assert_eq!(recv_messages(&mut bob, 1), [after]);
    assert!(
        ping_through(&mut bob).is_empty(),
        "nothing from before the join"
    );
}

/// Messages held for a connection still finishing its login (its offline
/// queue is being pushed) count as taken only once written. Here bob reads
/// his queue and stops: the held messages, far more than socket buffers and
/// the output cap take, are released and the server drops him before writing
/// them — they come back at his next login. (Before, held messages were
/// marked delivered as soon as they were queued for the socket, and lost
/// when the connection died.)
#[test]
fn messages_held_during_a_login_are_not_lost_if_it_dies_before_writing_them() {
    let server = TestServer::start(&["--no-rate-limits"]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    befriend(&server, &mut alice, "alice", "bob");
    let padding = "h".repeat(60 * 1024);
    let queued: Vec<i64> = (0..QUEUED)
        .map(|i| {
            send_and_ack(
                &mut alice,
                message_to("bob", &format!("q{i}-{padding}"), None),
            )
        })
        .collect();
    // bob logs in but does not read yet: his queue push stalls, so he stays
    // mid-login while alice's next messages arrive and are held for him.
    let mut bob = server.client();
    bob.send(&common::login_with_secret("bob", common::SECRET));
    let held: Vec<i64> = (0..HELD)
        .map(|i| {
            send_and_ack(
                &mut alice,
                message_to("bob", &format!("h{i}-{padding}"), None),
            )
        })
        .collect();
    assert_eq!(recv_messages(&mut bob, queued.len()), queued);
    drop(bob);
    // Wait until the server has seen bob go (alice is told he is offline).
    loop {
        match alice.recv() {
            ServerMessage::Presence(p) if p.username == "bob" && !p.online => break,
            _ => continue,
        }
    }
    let last = *held.last().expect("held messages");
    let mut again = logged_in(&server, "bob");
    let mut got = Vec::new();
    while got.last() != Some(&last) {
        got.extend(recv_messages(&mut again, 1));
    }
    // Everything from the first message the server had not finished writing
    // to bob (what reached his socket buffers is his: he has no receipts).
    let all: Vec<i64> = queued.iter().chain(&held).copied().collect();
    let start = all
        .iter()
        .position(|id| Some(id) == got.first())
        .expect("a message of bob's");
    assert_eq!(
        got,
        all[start..],
        "an unbroken run to the last held message"
    );
}
