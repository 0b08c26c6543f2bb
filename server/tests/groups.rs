//! Group chats through the real binary: creating and growing groups, fan-out
//! to every member's connections, offline members, history, leaving, privacy
//! and persistence.

mod common;

use std::time::Duration;

use common::{group_message, logged_in, register_all, Client, TestServer};
use protocol::client::{AddGroupMembers, CreateGroup, GetHistory, LeaveGroup, Sync};
use protocol::server::{Delivered, GroupInfo};
use protocol::{ClientMessage, ErrorType, ServerMessage};

fn create(client: &mut Client, name: &str, members: &[&str]) {
    client.send(&ClientMessage::CreateGroup(CreateGroup {
        name: name.into(),
        members: members.iter().map(|m| m.to_string()).collect(),
    }));
}

fn recv_group_info(client: &mut Client) -> GroupInfo {
    match client.recv() {
        ServerMessage::GroupInfo(info) => info,
        other => panic!("expected GroupInfo, got {other:?}"),
    }
}

fn group_history(
    client: &mut Client,
    group_id: i64,
    before: Option<i64>,
    limit: i64,
) -> ServerMessage {
    client.send(&ClientMessage::GetHistory(GetHistory {
        chat_id: format!("g:{group_id}"),
        before,
        limit: Some(limit),
    }));
    client.recv()
}

/// CreateGroup puts the creator and the members in the group and every
/// member online gets GroupInfo; any member may add members; GetGroups lists
/// the caller's groups.
#[test]
fn groups_are_created_grown_and_listed() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob", "carol", "dave"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    let mut dave = logged_in(&server, "dave");
    create(&mut alice, "team", &["bob", "carol"]);
    let info = recv_group_info(&mut alice);
    assert_eq!(info.name, "team");
    assert_eq!(info.members, vec!["alice", "bob", "carol"]);
    assert_eq!(recv_group_info(&mut bob), info);
    dave.expect_silence(Duration::from_millis(200));

    bob.send(&ClientMessage::AddGroupMembers(AddGroupMembers {
        group_id: info.group_id,
        members: vec!["dave".into()],
    }));
    let grown = recv_group_info(&mut bob);
    assert_eq!(grown.members, vec!["alice", "bob", "carol", "dave"]);
    assert_eq!(recv_group_info(&mut dave), grown);
    assert_eq!(recv_group_info(&mut alice), grown);

    dave.send(&ClientMessage::GetGroups);
    assert!(matches!(dave.recv(), ServerMessage::Groups(g) if g.data == vec![grown.clone()]));
}

/// A group message is stored once, acked, and delivered to every connection
/// of every member except the sending connection (the sender's other device
/// gets it); non-members get nothing and cannot post.
#[test]
fn group_messages_fan_out_to_every_member_connection() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob", "carol"]);
    let mut alice = logged_in(&server, "alice");
    let mut alice_phone = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    let mut bob_phone = logged_in(&server, "bob");
    let mut carol = logged_in(&server, "carol");
    create(&mut alice, "pair", &["bob"]);
    let group_id = recv_group_info(&mut alice).group_id;
    for other in [&mut alice_phone, &mut bob, &mut bob_phone] {
        recv_group_info(other);
    }

    alice.send(&group_message(group_id, "hello group"));
    let ack = alice.recv_ack();
    for other in [&mut alice_phone, &mut bob, &mut bob_phone] {
        let delivered: Delivered = other.recv_delivered();
        assert_eq!(delivered.message_id, ack.message_id);
        assert_eq!(delivered.group_id, Some(group_id));
        assert_eq!(delivered.dest_id, None);
        assert_eq!(delivered.source_id, "alice");
        assert_eq!(delivered.content, "hello group");
    }
    alice.expect_silence(Duration::from_millis(200));
    carol.expect_silence(Duration::from_millis(100));

    carol.send(&group_message(group_id, "let me in"));
    carol.expect_error(ErrorType::Forbidden, Some(11));
    carol.send(&group_message(group_id + 100, "anyone?"));
    carol.expect_error(ErrorType::UnknownGroup, Some(11));
    bob.expect_silence(Duration::from_millis(200));
}

/// A member who is offline gets the group's messages, in order and once,
/// right after the next SuccessLogin — interleaved by id with 1:1 messages.
#[test]
fn offline_members_get_group_messages_at_next_login_once() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob", "carol"]);
    let mut alice = logged_in(&server, "alice");
    create(&mut alice, "team", &["bob", "carol"]);
    let group_id = recv_group_info(&mut alice).group_id;

    let mut sent = Vec::new();
    for i in 0..3 {
        alice.send(&group_message(group_id, &format!("group {i}")));
        sent.push(alice.recv_ack().message_id);
        alice.send(&common::message_to("bob", &format!("direct {i}"), None));
        sent.push(alice.recv_ack().message_id);
    }

    let mut bob = logged_in(&server, "bob");
    let queued: Vec<i64> = (0..6).map(|_| bob.recv_delivered().message_id).collect();
    assert_eq!(queued, sent);
    bob.expect_silence(Duration::from_millis(200));
    drop(bob);

    // carol got only the group's three.
    let mut carol = logged_in(&server, "carol");
    let queued: Vec<i64> = (0..3).map(|_| carol.recv_delivered().message_id).collect();
    assert_eq!(queued, vec![sent[0], sent[2], sent[4]]);
    carol.expect_silence(Duration::from_millis(200));
    drop(carol);

    // Nothing is pushed twice.
    let mut bob = logged_in(&server, "bob");
    bob.expect_silence(Duration::from_millis(300));
}

/// Group history pages newest-first like 1:1 history, for members only;
/// Sync includes the groups the caller is in.
#[test]
fn group_history_and_sync_are_for_members_only() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob", "carol"]);
    let mut alice = logged_in(&server, "alice");
    create(&mut alice, "team", &["bob"]);
    let group_id = recv_group_info(&mut alice).group_id;
    let ids: Vec<i64> = (0..5)
        .map(|i| {
            alice.send(&group_message(group_id, &format!("m{i}")));
            alice.recv_ack().message_id
        })
        .collect();

    let mut bob = logged_in(&server, "bob");
    let queued = bob.drain_up_to(ids.len(), Duration::from_secs(10)); // the offline queue
    assert_eq!(queued.len(), ids.len(), "{queued:?}");
    match group_history(&mut bob, group_id, None, 2) {
        ServerMessage::History(page) => {
            assert_eq!(page.chat_id, format!("g:{group_id}"));
            let page_ids: Vec<i64> = page.data.iter().map(|m| m.message_id).collect();
            assert_eq!(page_ids, ids[3..].to_vec());
            assert!(page.has_more);
        }
        other => panic!("expected History, got {other:?}"),
    }
    match group_history(&mut bob, group_id, Some(ids[3]), 10) {
        ServerMessage::History(page) => {
            assert_eq!(page.data.len(), 3);
            assert!(!page.has_more);
        }
        other => panic!("expected History, got {other:?}"),
    }
    bob.send(&ClientMessage::Sync(Sync {
        since: 0,
        limit: None,
    }));
    assert!(matches!(bob.recv(), ServerMessage::Synced(s) if s.data.len() == 5));

    let mut carol = logged_in(&server, "carol");
    carol.send(&ClientMessage::GetHistory(GetHistory {
        chat_id: format!("g:{group_id}"),
        before: None,
        limit: None,
    }));
    carol.expect_error(ErrorType::Forbidden, Some(5));
    carol.send(&ClientMessage::GetHistory(GetHistory {
        chat_id: "g:987654".into(),
        before: None,
        limit: None,
    }));
    carol.expect_error(ErrorType::UnknownGroup, Some(5));
    carol.send(&ClientMessage::Sync(Sync {
        since: 0,
        limit: None,
    }));
    assert!(matches!(carol.recv(), ServerMessage::Synced(s) if s.data.is_empty()));
}

/// The leaver gets Groups and stops receiving; the others get the new
/// GroupInfo; when the last member leaves the group is gone.
#[test]
fn leaving_updates_everyone_and_the_last_one_out_deletes_the_group() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    create(&mut alice, "team", &["bob"]);
    let group_id = recv_group_info(&mut alice).group_id;
    recv_group_info(&mut bob);

    bob.send(&ClientMessage::LeaveGroup(LeaveGroup { group_id }));
    assert!(matches!(bob.recv(), ServerMessage::Groups(g) if g.data.is_empty()));
    assert!(matches!(recv_group_info(&mut alice), g if g.members == vec!["alice"]));
    alice.send(&group_message(group_id, "alone now"));
    alice.recv_ack();
    bob.expect_silence(Duration::from_millis(200));

    alice.send(&ClientMessage::LeaveGroup(LeaveGroup { group_id }));
    assert!(matches!(alice.recv(), ServerMessage::Groups(g) if g.data.is_empty()));
    alice.send(&group_message(group_id, "hello?"));
    alice.expect_error(ErrorType::UnknownGroup, Some(11));
}

/// Groups, their members and their messages survive a restart.
#[test]
fn groups_survive_a_restart() {
    let mut server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    create(&mut alice, "team", &["bob"]);
    let info = recv_group_info(&mut alice);
    alice.send(&group_message(info.group_id, "before the restart"));
    alice.recv_ack();
    drop(alice);
    server.restart();

    let mut bob = logged_in(&server, "bob");
    assert_eq!(bob.recv_delivered().content, "before the restart");
    bob.send(&ClientMessage::GetGroups);
    assert!(matches!(bob.recv(), ServerMessage::Groups(g) if g.data == vec![info.clone()]));
    bob.send(&group_message(info.group_id, "after"));
    bob.recv_ack();
}
