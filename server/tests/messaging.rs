//! 1:1 messaging: Message (tag 11) with its Ack, live and offline delivery,
//! Sync (tag 16) and GetHistory (tag 5).

mod common;

use std::time::Duration;

use common::{logged_in, message_to, register_all, Client, TestServer};
use protocol::client::{GetHistory, SendMessage, Sync};
use protocol::server::Delivered;
use protocol::{ClientMessage, ErrorType, ServerMessage};

const QUIET: Duration = Duration::from_millis(300);

/// Sends `content` to `dest` and returns the server id from the Ack.
fn send_acked(client: &mut Client, dest: &str, content: &str) -> i64 {
    client.send(&message_to(dest, content, None));
    client.recv_ack().message_id
}

fn sync(client: &mut Client, since: i64, limit: Option<i64>) -> (Vec<i64>, bool) {
    client.send(&ClientMessage::Sync(Sync { since, limit }));
    let page = client.recv_synced();
    (ids(&page.data), page.has_more)
}

fn history(
    client: &mut Client,
    chat_id: &str,
    before: Option<i64>,
    limit: Option<i64>,
) -> (Vec<Delivered>, bool) {
    client.send(&ClientMessage::GetHistory(GetHistory {
        chat_id: chat_id.into(),
        before,
        limit,
    }));
    let page = client.recv_history();
    assert_eq!(page.chat_id, chat_id, "History echoes the chat_id");
    (page.data, page.has_more)
}

fn ids(messages: &[Delivered]) -> Vec<i64> {
    messages.iter().map(|m| m.message_id).collect()
}

/// A message reaches an online recipient with the server's id, and the sender
/// gets an Ack with the same id echoing its own `message_id` (or null).
#[test]
fn message_is_delivered_and_acked_with_the_client_id() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");

    alice.send(&message_to("bob", "hello bob", Some("c-1")));
    let delivered = bob.recv_delivered();
    let ack = alice.recv_ack();
    assert_eq!(ack.message_id, delivered.message_id);
    assert_eq!(ack.client_message_id.as_deref(), Some("c-1"));
    assert_eq!(delivered.source_id, "alice");
    assert_eq!(delivered.dest_id.as_deref(), Some("bob"));
    assert_eq!(delivered.group_id, None);
    assert_eq!(delivered.content, "hello bob");
    assert!(!delivered.is_encrypted);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (delivered.time - now).abs() <= 5,
        "time {} vs now {now}",
        delivered.time
    );

    // Without a client id the Ack carries `client_message_id: null`; an
    // encrypted message keeps its flag; ids grow.
    alice.send(&ClientMessage::Message(SendMessage {
        dest_id: Some("bob".into()),
        group_id: None,
        content: "c2VjcmV0".into(),
        message_id: None,
        source_id: Some("alice".into()),
        is_encrypted: true,
    }));
    let second = bob.recv_delivered();
    assert!(second.is_encrypted);
    assert!(second.message_id > delivered.message_id, "ids must grow");
    let ack = alice.recv_json();
    assert_eq!(ack["tag"], 24, "{ack}");
    assert_eq!(ack["message_id"], second.message_id, "{ack}");
    assert!(
        ack.get("client_message_id").is_some_and(|v| v.is_null()),
        "client_message_id must be present and null: {ack}"
    );
    alice.expect_silence(QUIET);
}

/// Messages pipelined on one connection are acked in sending order with
/// increasing ids, and arrive at the recipient in that order.
#[test]
fn pipelined_messages_are_acked_in_order_with_increasing_ids() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");

    let count = 100;
    for i in 0..count {
        alice.send(&message_to("bob", &format!("m{i}"), Some(&format!("c{i}"))));
    }
    let mut ack_ids = Vec::new();
    for i in 0..count {
        let ack = alice.recv_ack();
        assert_eq!(
            ack.client_message_id,
            Some(format!("c{i}")),
            "acks out of order"
        );
        ack_ids.push(ack.message_id);
    }
    assert!(
        ack_ids.windows(2).all(|w| w[0] < w[1]),
        "ack ids {ack_ids:?}"
    );
    let delivered: Vec<Delivered> = (0..count).map(|_| bob.recv_delivered()).collect();
    assert_eq!(ids(&delivered), ack_ids);
    let contents: Vec<String> = delivered.into_iter().map(|m| m.content).collect();
    let expected: Vec<String> = (0..count).map(|i| format!("m{i}")).collect();
    assert_eq!(contents, expected);
}

/// Every connection of the recipient gets the message; the sender's other
/// connections do not get a copy.
#[test]
fn message_goes_to_every_recipient_connection_but_not_the_senders_others() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut alice_phone = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    let mut bob_phone = logged_in(&server, "bob");

    let id = send_acked(&mut alice, "bob", "to all of bob");
    assert_eq!(bob.recv_delivered().message_id, id);
    assert_eq!(bob_phone.recv_delivered().message_id, id);
    alice_phone.expect_silence(QUIET);
    alice.expect_silence(Duration::from_millis(50));
}

/// A message to yourself is stored, acked, and delivered to your other
/// connections but not back to the sending one.
#[test]
fn message_to_self_goes_to_the_other_connections_only() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice"]);
    let mut alice = logged_in(&server, "alice");
    let mut alice_phone = logged_in(&server, "alice");

    let id = send_acked(&mut alice, "alice", "note to self");
    let copy = alice_phone.recv_delivered();
    assert_eq!(copy.message_id, id);
    assert_eq!(
        (copy.source_id.as_str(), copy.dest_id.as_deref()),
        ("alice", Some("alice"))
    );
    alice.expect_silence(QUIET);
    let (page, _) = history(&mut alice, "alice", None, None);
    assert_eq!(ids(&page), vec![id]);
}

/// A message to an unknown user (names are case-sensitive) is `unknown_user`
/// and nothing is acked.
#[test]
fn message_to_unknown_user_is_unknown_user() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice"]);
    let mut alice = logged_in(&server, "alice");
    alice.send(&message_to("nobody", "hello?", Some("c-1")));
    alice.expect_error(ErrorType::UnknownUser, Some(11));
    // Usernames are case-sensitive: ALICE is nobody either.
    alice.send(&message_to("ALICE", "hello?", None));
    alice.expect_error(ErrorType::UnknownUser, Some(11));
    alice.expect_silence(QUIET);
}

/// A `source_id` other than the logged-in user is `forbidden` and nothing is
/// delivered or stored.
#[test]
fn message_with_someone_elses_source_id_is_forbidden() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob", "carol"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    alice.send(&ClientMessage::Message(SendMessage {
        dest_id: Some("bob".into()),
        group_id: None,
        content: "I am carol".into(),
        message_id: None,
        source_id: Some("carol".into()),
        is_encrypted: false,
    }));
    alice.expect_error(ErrorType::Forbidden, Some(11));
    bob.expect_silence(QUIET);
    let (page, _) = history(&mut bob, "alice", None, None);
    assert!(page.is_empty(), "a forbidden message was stored: {page:?}");
    let (page, _) = history(&mut bob, "carol", None, None);
    assert!(page.is_empty(), "a forbidden message was stored: {page:?}");
}

/// A client `message_id` of 65 characters is `bad_request` and nothing is
/// delivered; 64 characters are accepted and echoed.
#[test]
fn client_message_id_longer_than_64_chars_is_bad_request() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");

    let too_long = "x".repeat(65);
    alice.send(&message_to("bob", "never", Some(&too_long)));
    alice.expect_error(ErrorType::BadRequest, Some(11));
    bob.expect_silence(QUIET);

    let longest = "y".repeat(64);
    alice.send(&message_to("bob", "fits", Some(&longest)));
    assert_eq!(alice.recv_ack().client_message_id, Some(longest));
    assert_eq!(bob.recv_delivered().content, "fits");
}

/// Malformed messages (empty content, both or neither of `dest_id`/`group_id`,
/// wrongly typed fields) are `bad_request`; a `group_id` is `unknown_group`
/// while groups are not implemented; none is delivered.
#[test]
fn malformed_messages_are_rejected_and_not_delivered() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    for frame in [
        r#"{"tag":11,"dest_id":"bob","content":""}"#,
        r#"{"tag":11,"content":"to nobody"}"#,
        r#"{"tag":11,"dest_id":"bob","group_id":1,"content":"both"}"#,
        r#"{"tag":11,"dest_id":"bob"}"#,
        r#"{"tag":11,"dest_id":"bob","content":42}"#,
        r#"{"tag":11,"dest_id":"bob","content":"x","is_encrypted":"yes"}"#,
    ] {
        alice.send_raw(frame);
        let error = alice.recv_error();
        assert_eq!(
            (error.error_type, error.ref_tag),
            (ErrorType::BadRequest, Some(11)),
            "{frame}"
        );
    }
    alice.send_raw(r#"{"tag":11,"group_id":12345,"content":"to a group"}"#);
    alice.expect_error(ErrorType::UnknownGroup, Some(11));
    bob.expect_silence(QUIET);
}

/// Messages to an offline user are pushed in order right after their next
/// SuccessLogin, and only once: not again on the login after that.
#[test]
fn offline_messages_are_pushed_once_in_order_after_login() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let sent: Vec<i64> = (0..3)
        .map(|i| send_acked(&mut alice, "bob", &format!("offline {i}")))
        .collect();

    let mut bob = server.client();
    bob.login("bob", common::SECRET);
    let queued: Vec<Delivered> = (0..3).map(|_| bob.recv_delivered()).collect();
    assert_eq!(ids(&queued), sent);
    let contents: Vec<&str> = queued.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["offline 0", "offline 1", "offline 2"]);
    assert!(queued.iter().all(|m| m.source_id == "alice"));
    bob.expect_silence(QUIET);

    // A message delivered live is not queued either.
    let live = send_acked(&mut alice, "bob", "live");
    assert_eq!(bob.recv_delivered().message_id, live);
    bob.close();

    let mut bob_again = server.client();
    bob_again.login("bob", common::SECRET);
    bob_again.expect_silence(QUIET);
}

/// Content survives the round trip byte for byte: quotes, backslashes,
/// newlines, non-ASCII and emoji.
#[test]
fn content_is_delivered_verbatim() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    let content = "h\u{e9}llo \"quoted\" back\\slash\nnew line \u{2713} \u{1f389} <b>&amp;</b>";
    send_acked(&mut alice, "bob", content);
    assert_eq!(bob.recv_delivered().content, content);
    let (page, _) = history(&mut bob, "alice", None, None);
    assert_eq!(page[0].content, content);
}

/// History and Synced list plain message objects: every delivered field, and
/// no `tag`.
#[test]
fn history_and_sync_rows_are_message_objects_without_tag() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let id = send_acked(&mut alice, "bob", "row");
    for request in [r#"{"tag":5,"chat_id":"bob"}"#, r#"{"tag":16,"since":0}"#] {
        alice.send_raw(request);
        let page = alice.recv_json();
        let row = &page["data"][0];
        assert_eq!(row["message_id"], id, "{page}");
        assert_eq!(row["source_id"], "alice", "{page}");
        assert_eq!(row["dest_id"], "bob", "{page}");
        assert_eq!(row["content"], "row", "{page}");
        assert_eq!(row["is_encrypted"], false, "{page}");
        assert!(row["time"].is_i64(), "{page}");
        assert!(row.get("tag").is_none(), "a row carries a tag: {page}");
        assert_eq!(page["has_more"], false, "{page}");
    }
}

/// Several senders at once: every message reaches the recipient exactly once,
/// each sender's messages in its sending order, with the ids of their Acks.
#[test]
fn concurrent_senders_are_all_delivered_in_per_sender_order() {
    let server = TestServer::start(&[]);
    let senders = ["sender1", "sender2", "sender3", "sender4"];
    let mut names = senders.to_vec();
    names.push("bob");
    register_all(&server, &names);
    let mut bob = logged_in(&server, "bob");
    let per_sender = 50;

    let threads: Vec<_> = senders
        .iter()
        .map(|name| {
            let mut client = logged_in(&server, name);
            std::thread::spawn(move || {
                for i in 0..per_sender {
                    client.send(&message_to("bob", &format!("{i}"), None));
                }
                (0..per_sender)
                    .map(|_| client.recv_ack().message_id)
                    .collect::<Vec<i64>>()
            })
        })
        .collect();
    let received: Vec<Delivered> = (0..senders.len() * per_sender)
        .map(|_| bob.recv_delivered())
        .collect();
    bob.expect_silence(QUIET);

    for (name, thread) in senders.iter().zip(threads) {
        let acked = thread.join().unwrap();
        let from_sender: Vec<&Delivered> =
            received.iter().filter(|m| m.source_id == *name).collect();
        let delivered_ids: Vec<i64> = from_sender.iter().map(|m| m.message_id).collect();
        assert_eq!(
            delivered_ids, acked,
            "{name}: delivery order differs from ack order"
        );
        let contents: Vec<String> = from_sender.iter().map(|m| m.content.clone()).collect();
        let expected: Vec<String> = (0..per_sender).map(|i| format!("{i}")).collect();
        assert_eq!(contents, expected, "{name}: messages out of sending order");
    }
}

/// A long offline queue (1 001 messages) is pushed whole, in order, right
/// after the next SuccessLogin.
#[test]
fn long_offline_queue_is_pushed_whole() {
    // Sending 1 001 messages at once is over the per-connection message rate.
    let server = TestServer::start(&["--no-rate-limits"]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let count = 1_001;
    for i in 0..count {
        alice.send(&message_to("bob", &format!("queued {i}"), None));
    }
    let acked: Vec<i64> = (0..count).map(|_| alice.recv_ack().message_id).collect();

    let mut bob = logged_in(&server, "bob");
    let pushed: Vec<i64> = bob
        .drain_up_to(count, Duration::from_secs(3))
        .into_iter()
        .map(|frame| match frame {
            ServerMessage::Message(message) => message.message_id,
            other => panic!("expected only queued messages, got {other:?}"),
        })
        .collect();
    assert_eq!(pushed.len(), acked.len(), "queued messages pushed at login");
    assert_eq!(pushed, acked);
    bob.expect_silence(QUIET);
}

/// A session resumed on a new connection also gets the offline queue right
/// after its SuccessLogin.
#[test]
fn offline_messages_are_pushed_after_a_session_resume() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut bob = server.client();
    let session_id = bob
        .login("bob", common::SECRET)
        .session_id
        .expect("session_id");
    bob.close();
    let mut alice = logged_in(&server, "alice");
    let id = send_acked(&mut alice, "bob", "while you were away");

    let mut bob = server.client();
    bob.resume("bob", &session_id);
    let queued = bob.recv_delivered();
    assert_eq!(
        (queued.message_id, queued.content.as_str()),
        (id, "while you were away")
    );
}

/// Sync pages through everything the caller sent or received after `since`,
/// oldest first, with `has_more`, and leaves out other people's conversations.
#[test]
fn sync_pages_through_the_callers_messages() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob", "carol"]);
    let mut bob = logged_in(&server, "bob");
    let first = send_acked(&mut bob, "alice", "from bob");
    bob.close();
    let mut alice = logged_in(&server, "alice");
    assert_eq!(alice.recv_delivered().message_id, first);
    let mut from_alice: Vec<i64> = (0..4)
        .map(|i| send_acked(&mut alice, "bob", &format!("from alice {i}")))
        .collect();
    let mut carol = logged_in(&server, "carol");
    send_acked(&mut carol, "alice", "not bob's business");

    let mut bob = logged_in(&server, "bob");
    for id in &from_alice {
        assert_eq!(bob.recv_delivered().message_id, *id);
    }
    let mut all = vec![first];
    all.append(&mut from_alice);

    assert_eq!(sync(&mut bob, 0, Some(2)), (all[0..2].to_vec(), true));
    assert_eq!(sync(&mut bob, all[1], Some(2)), (all[2..4].to_vec(), true));
    assert_eq!(sync(&mut bob, all[3], Some(2)), (all[4..5].to_vec(), false));
    assert_eq!(sync(&mut bob, all[1], Some(3)), (all[2..5].to_vec(), false));
    assert_eq!(sync(&mut bob, 0, None), (all.clone(), false));
    assert_eq!(sync(&mut bob, all[4], None), (vec![], false));

    bob.send(&ClientMessage::Sync(Sync {
        since: 0,
        limit: None,
    }));
    let page = bob.recv_synced();
    assert_eq!(page.data[0].content, "from bob");
    assert_eq!(page.data[0].source_id, "bob");
    assert_eq!(page.data[0].dest_id.as_deref(), Some("alice"));
    assert_eq!(page.data[1].content, "from alice 0");

    for frame in [
        r#"{"tag":16,"since":0,"limit":0}"#,
        r#"{"tag":16,"since":0,"limit":1001}"#,
        r#"{"tag":16,"since":-1}"#,
        r#"{"tag":16}"#,
    ] {
        bob.send_raw(frame);
        let error = bob.recv_error();
        assert_eq!(
            (error.error_type, error.ref_tag),
            (ErrorType::BadRequest, Some(16)),
            "{frame}"
        );
    }
}

/// A History page holds the newest `limit` messages before `before`, oldest
/// first, with `has_more` saying whether older ones exist, for both sides.
#[test]
fn history_pages_backwards_oldest_first() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob"]);
    let mut alice = logged_in(&server, "alice");
    let mut bob = logged_in(&server, "bob");
    let mut all = Vec::new();
    for i in 0..5 {
        let (sender, receiver, dest) = if i % 2 == 0 {
            (&mut alice, &mut bob, "bob")
        } else {
            (&mut bob, &mut alice, "alice")
        };
        all.push(send_acked(sender, dest, &format!("turn {i}")));
        receiver.recv_delivered();
    }

    let (page, more) = history(&mut alice, "bob", None, Some(2));
    assert_eq!((ids(&page), more), (all[3..5].to_vec(), true));
    let (page, more) = history(&mut alice, "bob", Some(all[3]), Some(2));
    assert_eq!((ids(&page), more), (all[1..3].to_vec(), true));
    let (page, more) = history(&mut alice, "bob", Some(all[1]), Some(2));
    assert_eq!((ids(&page), more), (all[0..1].to_vec(), false));
    let (page, more) = history(&mut alice, "bob", None, Some(5));
    assert_eq!((ids(&page), more), (all.clone(), false));
    let (page, more) = history(&mut alice, "bob", Some(all[0]), None);
    assert_eq!((ids(&page), more), (vec![], false));

    let (page, more) = history(&mut bob, "alice", None, None);
    assert_eq!((ids(&page), more), (all.clone(), false));
    let contents: Vec<&str> = page.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["turn 0", "turn 1", "turn 2", "turn 3", "turn 4"]);
    assert_eq!(page[1].source_id, "bob");
    assert_eq!(page[1].dest_id.as_deref(), Some("alice"));

    for frame in [
        r#"{"tag":5,"chat_id":"bob","limit":0}"#,
        r#"{"tag":5,"chat_id":"bob","limit":201}"#,
        r#"{"tag":5,"chat_id":"bob","before":-1}"#,
        r#"{"tag":5}"#,
    ] {
        alice.send_raw(frame);
        let error = alice.recv_error();
        assert_eq!(
            (error.error_type, error.ref_tag),
            (ErrorType::BadRequest, Some(5)),
            "{frame}"
        );
    }
}

/// History with a user one never talked to is an empty page; an unknown user is
/// `unknown_user`; a third user cannot read someone else's conversation.
#[test]
fn history_is_private_and_empty_for_strangers() {
    let server = TestServer::start(&[]);
    register_all(&server, &["alice", "bob", "carol"]);
    let mut alice = logged_in(&server, "alice");
    send_acked(&mut alice, "bob", "private");
    send_acked(&mut alice, "bob", "also private");

    let mut carol = logged_in(&server, "carol");
    assert_eq!(history(&mut carol, "alice", None, None), (vec![], false));
    assert_eq!(history(&mut carol, "bob", None, None), (vec![], false));
    carol.send(&ClientMessage::GetHistory(GetHistory {
        chat_id: "nobody".into(),
        before: None,
        limit: None,
    }));
    carol.expect_error(ErrorType::UnknownUser, Some(5));
    carol.send(&ClientMessage::GetHistory(GetHistory {
        chat_id: "g:1".into(),
        before: None,
        limit: None,
    }));
    carol.expect_error(ErrorType::UnknownGroup, Some(5));

    let (page, _) = history(&mut alice, "bob", None, None);
    assert_eq!(page.len(), 2);
}
