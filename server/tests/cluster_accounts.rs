//! Cluster mode's accounts through the real binary, on one fresh PostgreSQL
//! database and the NATS at `CHAT_TEST_NATS`: a server whose bus never told
//! it of an account or a group finds them in the database (the caches' miss
//! path), and the failed-login lockout and the registration limit count
//! over every server as on one. Without PostgreSQL or NATS each test says
//! `SKIPPED` (and fails with `CI=true`).

mod common;

use std::time::{Duration, Instant};

use common::nats::{nats_for, TestNats};
use common::postgres_db::TestDatabase;
use common::{
    group_message, login_with_secret, message_to, recv_until, register_message, Client, TestServer,
    SECRET,
};
use protocol::client::{AddGroupMembers, CreateGroup, UserRef};
use protocol::server::{LoginError, RegisterError};
use protocol::{ClientMessage, ClientTag, ErrorType, ServerMessage};

/// A server of the cluster on `database`, its bus events under `prefix`:
/// servers given different prefixes share the database but never hear each
/// other (a bus that lost every event between them).
fn node(database: &TestDatabase, nats: &TestNats, prefix: &str, name: &str) -> TestServer {
    TestServer::start(&[
        "--database",
        &database.url,
        "--nats",
        &nats.url,
        "--nats-prefix",
        prefix,
        "--node-id",
        name,
    ])
}

/// Three servers on `database` hearing each other.
fn three_nodes(database: &TestDatabase, nats: &TestNats) -> Vec<TestServer> {
    (0..3)
        .map(|n| node(database, nats, &nats.prefix, &format!("node{n}")))
        .collect()
}

/// Sends and returns the Ack's id, panicking on an Error.
#[track_caller]
fn send_acked(client: &mut Client, message: ClientMessage) -> i64 {
    client.send(&message);
    recv_until(client, |frame| match frame {
        ServerMessage::Ack(ack) => Some(ack.message_id),
        ServerMessage::Error(error) => panic!("expected an Ack, got {error:?}"),
        _ => None,
    })
}

/// The GroupInfo answering a group change.
#[track_caller]
fn recv_group_id(client: &mut Client) -> i64 {
    recv_until(client, |frame| match frame {
        ServerMessage::GroupInfo(info) => Some(info.group_id),
        ServerMessage::Error(error) => panic!("expected GroupInfo, got {error:?}"),
        _ => None,
    })
}

/// Accounts and a group made on a server whose bus events never reach the
/// others (another `--nats-prefix`) are still found by them: a message, a
/// contact, a group add and a session resume naming them succeed there,
/// and a member sends to the group; a name nobody registered is still
/// `unknown_user`.
#[test]
fn accounts_and_groups_the_bus_never_announced_are_found_in_the_database() {
    let test = "accounts_and_groups_the_bus_never_announced_are_found_in_the_database";
    let (Some(nats), Some(database)) = (nats_for(test), TestDatabase::create(test)) else {
        return;
    };
    let here = node(&database, &nats, &nats.prefix, "here");
    let elsewhere = node(
        &database,
        &nats,
        &format!("{}other", nats.prefix),
        "elsewhere",
    );
    // Made while both run: `here` hears nothing of them.
    let mut ann = here.client();
    ann.register_and_login("ann");
    let mut cat = elsewhere.client();
    cat.register("cat", SECRET);
    cat.register("dan", SECRET);
    let session = cat.login("cat", SECRET).session_id.expect("a session id");

    let id = send_acked(&mut ann, message_to("cat", "found you", None));
    assert!(id > 0);
    ann.send(&ClientMessage::AddContact(UserRef {
        username: "dan".into(),
    }));
    let directory = ann.recv_directory();
    assert!(directory.data.iter().any(|entry| entry.username == "dan"));
    ann.send(&message_to("nobody", "lost", None));
    let error = ann.expect_error(ErrorType::UnknownUser, Some(ClientTag::Message as i64));
    assert!(error.detail.contains("no such user"), "{error:?}");

    // A session opened elsewhere resumes here.
    let mut cat_here = here.client();
    cat_here.resume("cat", &session);

    // A group made elsewhere, with `ann` (whom `elsewhere` never heard of
    // either): `here` has no such group cached, yet ann's send to it goes.
    cat.send(&ClientMessage::CreateGroup(CreateGroup {
        name: "far".into(),
        members: vec!["ann".into()],
    }));
    let group_id = recv_group_id(&mut cat);
    let sent = send_acked(&mut ann, group_message(group_id, "to the far group"));
    assert!(sent > id);
    // And a member added elsewhere after `here` cached the group sends too.
    cat.send(&ClientMessage::AddGroupMembers(AddGroupMembers {
        group_id,
        members: vec!["dan".into()],
    }));
    recv_group_id(&mut cat);
    let mut dan = here.client();
    dan.login("dan", SECRET);
    send_acked(&mut dan, group_message(group_id, "dan too"));
}

/// Five wrong passwords spread over three servers lock the account as five
/// on one server would: the sixth attempt, with the right password, is
/// refused `rate_limited` on every server, though none saw five itself.
#[test]
fn failures_spread_over_three_servers_lock_the_account_as_on_one() {
    let test = "failures_spread_over_three_servers_lock_the_account_as_on_one";
    let (Some(nats), Some(database)) = (nats_for(test), TestDatabase::create(test)) else {
        return;
    };
    let nodes = three_nodes(&database, &nats);
    nodes[0].client().register("ann", SECRET);
    for attempt in 0..5 {
        let mut client = nodes[attempt % 3].client();
        client.send(&login_with_secret("ann", "wrong-password-1"));
        let failure = client.recv_fail_login();
        assert_eq!(
            failure.error_type,
            LoginError::InvalidCredentials,
            "attempt {attempt}"
        );
    }
    for node in &nodes {
        let mut client = node.client();
        client.send(&login_with_secret("ann", SECRET));
        assert_eq!(client.recv_fail_login().error_type, LoginError::RateLimited);
    }
    let mut check = database.connect();
    let locked: i64 = check
        .query_one(
            "SELECT COUNT(*) FROM login_failures WHERE key = 'account:ann' AND locked_until_ms > 0",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(locked, 1, "the lock is one row every server reads");
}

/// Registrations from one address spread over three servers take from one
/// shared bucket: they are refused once the address's burst (100) and what
/// refilled meanwhile (20 a second) are used, not at three times that.
#[test]
fn registrations_from_one_address_are_limited_across_servers() {
    let test = "registrations_from_one_address_are_limited_across_servers";
    let (Some(nats), Some(database)) = (nats_for(test), TestDatabase::create(test)) else {
        return;
    };
    let nodes = three_nodes(&database, &nats);
    let mut clients: Vec<Client> = nodes.iter().map(TestServer::client).collect();
    let started = Instant::now();
    let mut accepted = 0usize;
    let refused_after = loop {
        assert!(accepted < 300, "never refused: the limit is per server");
        let client = &mut clients[accepted % 3];
        let name = format!("user{accepted}");
        client.send(&register_message(&name, SECRET, "someone@example.com"));
        match client.recv() {
            ServerMessage::SuccessRegister(_) => accepted += 1,
            ServerMessage::FailRegister(failure) => {
                assert_eq!(failure.error_type, RegisterError::RateLimited);
                break started.elapsed();
            }
            other => panic!("expected a Register answer, got {other:?}"),
        }
    };
    let allowed = 100.0 + 20.0 * refused_after.as_secs_f64() + 1.0;
    assert!(
        (accepted as f64) <= allowed,
        "{accepted} registrations in {refused_after:?}: more than one bucket's worth"
    );
    assert!(
        accepted >= 100,
        "the burst is the same as on one server: {accepted}"
    );
    // The bucket refills: after a while one more goes through.
    std::thread::sleep(Duration::from_millis(200));
    clients[0].register("late", SECRET);
}
