//! Cluster mode through the real binary: three servers (`--nats`) on one
//! PostgreSQL database (fresh per test, dropped after) and the NATS server
//! at `CHAT_TEST_NATS`, each test under a subject prefix of its own.
//! Accounts, 1:1 and group messages, presence, Delivered receipts and
//! logouts cross servers; with two servers writing at full speed a reader's
//! `Sync{since}` never skips an id that appears later; a server killed with
//! SIGKILL has its users shown offline within `--timeout`, a server started
//! later learns who is online, a NATS outage changes nobody's presence
//! while `/healthz` tells it, and a server cut off from PostgreSQL is
//! unhealthy and its users look offline elsewhere (outages of one server
//! through a relay the test cuts: `common/relay.rs`). Without PostgreSQL
//! or NATS each test says `SKIPPED` (and fails with `CI=true`).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::nats::{nats_for, TestNats};
use common::postgres_db::TestDatabase;
use common::relay::TcpRelay;
use common::{
    group_message, logged_in, message_to, recv_until, refused_start, register_all, Client, Polled,
    TestServer, SECRET,
};
use protocol::client::{CreateGroup, Logout, Sync, UserRef};
use protocol::{ClientMessage, ServerMessage};

/// Servers `node0`, `node1`, … on one database and one NATS (the servers
/// are dropped first).
struct Cluster {
    nodes: Vec<TestServer>,
    nats: TestNats,
    extra: Vec<String>,
    database: TestDatabase,
}

impl Cluster {
    /// `count` servers, or `None` (skipped) without PostgreSQL or NATS.
    fn start(test: &str, count: usize, extra: &[&str]) -> Option<Cluster> {
        let nats = nats_for(test)?;
        let database = TestDatabase::create(test)?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            nats,
            extra: extra.iter().map(|arg| arg.to_string()).collect(),
            database,
        };
        for _ in 0..count {
            cluster.add_node(None, None);
        }
        Some(cluster)
    }

    /// Starts one more server, reaching NATS at `nats_url` and PostgreSQL
    /// at `database_url` (default: the test's); its index.
    fn add_node(&mut self, nats_url: Option<&str>, database_url: Option<&str>) -> usize {
        let n = self.nodes.len();
        let node = format!("node{n}");
        let url = nats_url.unwrap_or(&self.nats.url).to_owned();
        let database = database_url.unwrap_or(&self.database.url).to_owned();
        let mut args = vec![
            "--database",
            &database,
            "--nats",
            &url,
            "--nats-prefix",
            &self.nats.prefix,
            "--node-id",
            &node,
        ];
        args.extend(self.extra.iter().map(String::as_str));
        self.nodes.push(TestServer::start(&args));
        n
    }

    fn node(&self, n: usize) -> &TestServer {
        &self.nodes[n]
    }
}

/// Sends and returns the Ack's id.
#[track_caller]
fn send_acked(client: &mut Client, message: ClientMessage) -> i64 {
    client.send(&message);
    recv_until(client, |frame| match frame {
        ServerMessage::Ack(ack) => Some(ack.message_id),
        _ => None,
    })
}

/// The next delivered message: `(id, content)`.
#[track_caller]
fn recv_message(client: &mut Client) -> (i64, String) {
    recv_until(client, |frame| match frame {
        ServerMessage::Message(message) => Some((message.message_id, message.content)),
        _ => None,
    })
}

/// Registers on one server and logs in on another; messages go both ways
/// between users on different servers, each delivered live once.
#[test]
fn register_on_one_server_log_in_on_another_and_message_both_ways() {
    let Some(cluster) = Cluster::start(
        "register_on_one_server_log_in_on_another_and_message_both_ways",
        3,
        &[],
    ) else {
        return;
    };
    let mut registrar = cluster.node(0).client();
    registrar.register("ann", SECRET);
    registrar.register("bob", SECRET);
    let mut ann = cluster.node(1).client();
    ann.login("ann", SECRET);
    let mut bob = cluster.node(2).client();
    bob.login("bob", SECRET);

    let id = send_acked(&mut ann, message_to("bob", "hello from node1", None));
    assert_eq!(recv_message(&mut bob), (id, "hello from node1".into()));
    let reply = send_acked(&mut bob, message_to("ann", "hello from node2", None));
    assert!(reply > id, "ids grow across servers");
    assert_eq!(recv_message(&mut ann), (reply, "hello from node2".into()));
    bob.expect_silence(Duration::from_millis(300));

    // Offline on every server: queued in the database, pushed at the next
    // login wherever it happens.
    drop(bob);
    let queued = send_acked(&mut ann, message_to("bob", "while away", None));
    let mut bob = cluster.node(0).client();
    bob.login("bob", SECRET);
    assert_eq!(recv_message(&mut bob), (queued, "while away".into()));
}

/// A resend of a client id through another server is acked with the first
/// id and stored once.
#[test]
fn a_resend_through_another_server_is_recognised() {
    let Some(cluster) = Cluster::start("a_resend_through_another_server_is_recognised", 2, &[])
    else {
        return;
    };
    let mut setup = cluster.node(0).client();
    setup.register("ann", SECRET);
    setup.register("bob", SECRET);
    let mut first = cluster.node(0).client();
    first.login("ann", SECRET);
    let id = send_acked(&mut first, message_to("bob", "once", Some("c-1")));
    let mut second = cluster.node(1).client();
    second.login("ann", SECRET);
    assert_eq!(
        send_acked(&mut second, message_to("bob", "once", Some("c-1"))),
        id
    );
    let stored = cluster.database.stored_messages();
    assert_eq!(stored.values().filter(|c| *c == "once").count(), 1);
}

/// A group created on one server fans out to members on every server, the
/// creator's GroupInfo included, and their messages reach each other.
#[test]
fn a_group_fans_out_across_servers() {
    let Some(cluster) = Cluster::start("a_group_fans_out_across_servers", 3, &[]) else {
        return;
    };
    let mut setup = cluster.node(0).client();
    for name in ["ann", "bob", "cat"] {
        setup.register(name, SECRET);
    }
    let mut clients: Vec<Client> = ["ann", "bob", "cat"]
        .iter()
        .enumerate()
        .map(|(n, name)| {
            let mut client = cluster.node(n).client();
            client.login(name, SECRET);
            client
        })
        .collect();
    clients[0].send(&ClientMessage::CreateGroup(CreateGroup {
        name: "trio".into(),
        members: vec!["bob".into(), "cat".into()],
    }));
    let group_id = recv_until(&mut clients[0], |frame| match frame {
        ServerMessage::GroupInfo(info) => Some(info.group_id),
        _ => None,
    });
    for client in &mut clients[1..] {
        let info = recv_until(client, |frame| match frame {
            ServerMessage::GroupInfo(info) => Some(info),
            _ => None,
        });
        assert_eq!(info.group_id, group_id);
        assert_eq!(info.members.len(), 3);
    }
    // Sent on node 2 (which learnt the group over the bus).
    let id = send_acked(&mut clients[2], group_message(group_id, "to all"));
    for client in &mut clients[..2] {
        assert_eq!(recv_message(client), (id, "to all".into()));
    }
    let id = send_acked(&mut clients[0], group_message(group_id, "back"));
    for client in &mut clients[1..] {
        assert_eq!(recv_message(client), (id, "back".into()));
    }
}

/// Contacts on different servers: the added user hears the request, the
/// add that makes them mutual tells each that the other is online, and
/// each sees the other come and go.
#[test]
fn contacts_and_presence_cross_servers() {
    let Some(cluster) = Cluster::start("contacts_and_presence_cross_servers", 3, &[]) else {
        return;
    };
    let mut setup = cluster.node(0).client();
    setup.register("ann", SECRET);
    setup.register("bob", SECRET);
    let mut ann = cluster.node(0).client();
    ann.login("ann", SECRET);
    let mut bob = cluster.node(1).client();
    bob.login("bob", SECRET);
    ann.send(&add_contact("bob"));
    recv_until(&mut ann, |frame| match frame {
        ServerMessage::Directory(_) => Some(()),
        _ => None,
    });
    let asked_by = recv_until(&mut bob, |frame| match frame {
        ServerMessage::ContactRequest(request) => Some(request.username),
        _ => None,
    });
    assert_eq!(asked_by, "ann");
    bob.send(&add_contact("ann"));
    let directory = recv_until(&mut bob, |frame| match frame {
        ServerMessage::Directory(directory) => Some(directory),
        _ => None,
    });
    assert!(
        directory
            .data
            .iter()
            .any(|e| e.username == "ann" && e.online),
        "ann is online on another server: {directory:?}"
    );
    for (client, other) in [(&mut ann, "bob"), (&mut bob, "ann")] {
        let online = recv_until(client, |frame| match frame {
            ServerMessage::Presence(p) if p.username == other => Some(p.online),
            _ => None,
        });
        assert!(online, "{other} is online");
    }
    // Bob leaves and comes back on a third server: ann hears both.
    drop(bob);
    let went = recv_until(&mut ann, |frame| match frame {
        ServerMessage::Presence(p) if p.username == "bob" => Some(p.online),
        _ => None,
    });
    assert!(!went, "bob went offline");
    let mut bob = cluster.node(2).client();
    bob.login("bob", SECRET);
    let came = recv_until(&mut ann, |frame| match frame {
        ServerMessage::Presence(p) if p.username == "bob" => Some(p.online),
        _ => None,
    });
    assert!(came, "bob came back");
}

fn add_contact(username: &str) -> ClientMessage {
    ClientMessage::AddContact(UserRef {
        username: username.into(),
    })
}

/// Logout of a session closes its connections on every server; the
/// user's other sessions stay.
#[test]
fn logout_closes_the_session_on_every_server() {
    let Some(cluster) = Cluster::start("logout_closes_the_session_on_every_server", 3, &[]) else {
        return;
    };
    let mut setup = cluster.node(0).client();
    setup.register("ann", SECRET);
    let mut first = cluster.node(0).client();
    let session = first.login("ann", SECRET).session_id.expect("a session id");
    let mut same = cluster.node(1).client();
    same.resume("ann", &session);
    let mut other = cluster.node(2).client();
    other.login("ann", SECRET);
    let mut same_elsewhere = cluster.node(2).client();
    same_elsewhere.resume("ann", &session);

    first.send(&ClientMessage::Logout(Logout { username: None }));
    recv_until(&mut first, |frame| match frame {
        ServerMessage::SuccessLogout(_) => Some(()),
        _ => None,
    });
    for client in [&mut same, &mut same_elsewhere] {
        let (_, closed) = client.read_until_closed(Duration::from_secs(5));
        assert_eq!(closed.code(), Some(1000), "{closed:?}");
    }
    other.ping_pong();
}

/// A receipts device gets the messages of senders on two servers in
/// increasing id order with none left out, so its cumulative confirmation
/// is safe; after a resume on another server it gets only what it had not
/// confirmed.
#[test]
fn a_receipts_device_gets_every_server_s_messages_in_id_order() {
    let Some(cluster) = Cluster::start(
        "a_receipts_device_gets_every_server_s_messages_in_id_order",
        2,
        &["--no-rate-limits"],
    ) else {
        return;
    };
    let mut setup = cluster.node(0).client();
    for name in ["ann", "bob", "cat"] {
        setup.register(name, SECRET);
    }
    let mut bob = cluster.node(1).client();
    let session = bob
        .login_with_receipts("bob")
        .session_id
        .expect("a session");
    let senders: Vec<_> = [("ann", 0), ("cat", 1)]
        .into_iter()
        .map(|(name, n)| {
            let port = cluster.node(n).port;
            std::thread::spawn(move || {
                let mut client = Client::connect(port);
                client.login(name, SECRET);
                (0..40)
                    .map(|k| {
                        send_acked(&mut client, message_to("bob", &format!("{name}{k}"), None))
                    })
                    .collect::<Vec<i64>>()
            })
        })
        .collect();
    let acked: BTreeSet<i64> = senders
        .into_iter()
        .flat_map(|sender| sender.join().expect("a sender"))
        .collect();
    let mut got = Vec::new();
    while got.len() < acked.len() {
        got.push(recv_message(&mut bob).0);
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in id order: {got:?}");
    assert_eq!(got.iter().copied().collect::<BTreeSet<_>>(), acked);
    let half = got[got.len() / 2];
    bob.confirm(half);
    bob.ping_pong();
    drop(bob);
    // The other server writes the confirmation when it sees the close:
    // the resume waits for the database to have it.
    let mut db = cluster.database.connect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let confirmed: i64 = db
            .query_one("SELECT MAX(confirmed_through) FROM sessions", &[])
            .expect("read sessions")
            .get(0);
        if confirmed >= half {
            break;
        }
        assert!(Instant::now() < deadline, "confirmation not written");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut again = cluster.node(0).client();
    again.resume_with_receipts("bob", &session);
    let rest: Vec<i64> = got.iter().copied().filter(|id| *id > half).collect();
    let mut resent = Vec::new();
    while resent.len() < rest.len() {
        resent.push(recv_message(&mut again).0);
    }
    assert_eq!(resent, rest, "everything past the confirmation, in order");
}

/// `kill -9` of one server while a sender pipelines through it: every
/// acked message is in the database once, the other server goes on, the
/// restarted one hands out only new ids, and a receipts device resumed on
/// the survivor gets every acked message.
#[test]
fn a_server_killed_loses_nothing_acked_and_ids_are_not_reused() {
    let Some(mut cluster) = Cluster::start(
        "a_server_killed_loses_nothing_acked_and_ids_are_not_reused",
        2,
        &["--no-rate-limits"],
    ) else {
        return;
    };
    let mut setup = cluster.node(1).client();
    setup.register("ann", SECRET);
    setup.register("bob", SECRET);
    let mut bob = cluster.node(1).client();
    let session = bob
        .login_with_receipts("bob")
        .session_id
        .expect("a session");
    drop(bob);
    let mut ann = cluster.node(0).client();
    ann.login("ann", SECRET);
    let mut acked = BTreeSet::new();
    for k in 0..50 {
        acked.insert(send_acked(
            &mut ann,
            message_to("bob", &format!("m{k}"), None),
        ));
    }
    // Pipelined, then killed with some in flight: only the acked count.
    for k in 50..100 {
        ann.send(&message_to("bob", &format!("m{k}"), None));
    }
    cluster.nodes[0].crash_and_restart();
    let stored: BTreeSet<i64> = cluster.database.stored_messages().into_keys().collect();
    assert!(acked.is_subset(&stored), "every acked message is stored");
    let highest = stored.iter().copied().max().unwrap_or(0);

    let mut ann = cluster.node(0).client();
    ann.login("ann", SECRET);
    let after_restart = send_acked(&mut ann, message_to("bob", "after", None));
    assert!(after_restart > highest, "no id is handed out twice");
    let mut survivor = cluster.node(1).client();
    survivor.login("ann", SECRET);
    let on_survivor = send_acked(&mut survivor, message_to("bob", "survivor", None));
    assert!(on_survivor > after_restart);

    let mut bob = cluster.node(1).client();
    bob.resume_with_receipts("bob", &session);
    let everything: BTreeSet<i64> = cluster.database.stored_messages().into_keys().collect();
    let mut got = BTreeSet::new();
    while got.len() < everything.len() {
        got.insert(recv_message(&mut bob).0);
    }
    assert_eq!(got, everything, "the device gets everything stored");
}

/// Two senders on two servers write to one recipient as fast as they can
/// for a few seconds while a reader repeats `Sync{since}` from the last id
/// it saw: it never passes an id that commits later (every id it ever sees
/// is above the last one it had), and at the end it has exactly what the
/// database holds.
#[test]
fn with_two_writers_sync_never_skips_an_id() {
    let Some(cluster) = Cluster::start(
        "with_two_writers_sync_never_skips_an_id",
        2,
        &["--no-rate-limits"],
    ) else {
        return;
    };
    let mut setup = cluster.node(0).client();
    for name in ["sender0", "sender1", "rec"] {
        setup.register(name, SECRET);
    }
    let writing = Duration::from_secs(3);
    let senders: Vec<_> = (0..2)
        .map(|n| {
            let port = cluster.node(n).port;
            std::thread::spawn(move || hammer(port, &format!("sender{n}"), writing))
        })
        .collect();
    let mut reader = cluster.node(0).client();
    reader.login("rec", SECRET);
    let mut seen = BTreeSet::new();
    let mut last = 0;
    let until = Instant::now() + writing + Duration::from_secs(1);
    while Instant::now() < until {
        for id in sync_page(&mut reader, last) {
            assert!(id > last, "a page holds only ids past since");
            assert!(
                seen.insert(id),
                "id {id} came twice: a page went back below {last}"
            );
            last = id;
        }
    }
    let acked: usize = senders
        .into_iter()
        .map(|sender| sender.join().expect("a sender"))
        .sum();
    // The rest, then nothing more.
    loop {
        let page = sync_page(&mut reader, last);
        if page.is_empty() {
            break;
        }
        for id in page {
            assert!(seen.insert(id) && id > last);
            last = id;
        }
    }
    let stored: BTreeSet<i64> = cluster.database.stored_messages().into_keys().collect();
    assert!(acked > 100, "the writers wrote ({acked} acked)");
    assert_eq!(stored.len(), acked, "every acked message is stored once");
    assert_eq!(
        seen, stored,
        "the reader saw exactly what was committed: it skipped nothing"
    );
}

/// Sends messages to `rec` as `name` through the server on `port` for
/// `writing`, 32 in flight at a time; the number acked.
fn hammer(port: u16, name: &str, writing: Duration) -> usize {
    let mut client = Client::connect(port);
    client.login(name, SECRET);
    let until = Instant::now() + writing;
    let mut acked = 0;
    while Instant::now() < until {
        for k in 0..32 {
            client.send(&message_to("rec", &format!("{name}-{acked}-{k}"), None));
        }
        for _ in 0..32 {
            recv_until(&mut client, |frame| match frame {
                ServerMessage::Ack(_) => Some(()),
                ServerMessage::Error(error) => panic!("{name}: {error:?}"),
                _ => None,
            });
            acked += 1;
        }
    }
    acked
}

/// One Sync page past `since`: its ids (pushed messages in between are
/// skipped).
fn sync_page(reader: &mut Client, since: i64) -> Vec<i64> {
    reader.send(&ClientMessage::Sync(Sync {
        since,
        limit: Some(1000),
    }));
    recv_until(reader, |frame| match frame {
        ServerMessage::Synced(page) => Some(page.data.iter().map(|m| m.message_id).collect()),
        _ => None,
    })
}

/// A server in cluster mode whose NATS does not answer refuses to start
/// and says where it looked.
#[test]
fn a_cluster_server_without_its_nats_refuses_to_start() {
    let Some(database) = TestDatabase::create("a_cluster_server_without_its_nats_refuses_to_start")
    else {
        return;
    };
    let stderr = refused_start(&["--database", &database.url, "--nats", "nats://127.0.0.1:1"]);
    assert!(
        stderr.contains("cannot connect to NATS at nats://127.0.0.1:1"),
        "{stderr}"
    );
}

/// `--nats` without a PostgreSQL database is refused with why; so are
/// `--node-id` without `--nats`, and more connections than a heartbeat
/// lists in cluster mode.
#[test]
fn cluster_mode_needs_postgres() {
    let why = refused_start(&["--nats", "nats://127.0.0.1:4222"]);
    assert!(
        why.contains("--nats (cluster mode) needs --database postgres://"),
        "{why}"
    );
    let why = refused_start(&["--node-id", "n1"]);
    assert!(why.contains("--node-id"), "{why}");
    let why = refused_start(&[
        "--database",
        "postgres://chat@127.0.0.1:1/chat",
        "--nats",
        "nats://127.0.0.1:4222",
        "--max-connections",
        "2000000",
    ]);
    assert!(why.contains("--max-connections above"), "{why}");
}

/// `--timeout` of the liveness tests: other servers' expiry is half of it
/// (3 s), and a server beats every 0.75 s.
const SHORT_TIMEOUT: Duration = Duration::from_secs(6);

/// The flags of a server with [`SHORT_TIMEOUT`] (and pings often enough
/// that a client that reads is never idle-closed).
const SHORT_TIMEOUT_ARGS: [&str; 4] = ["--timeout", "6", "--heartbeat", "2"];

/// Makes `a` and `b` (logged in as `a_name` and `b_name`) mutual contacts
/// and waits until each is told the other is online.
fn make_mutual(a: &mut Client, a_name: &str, b: &mut Client, b_name: &str) {
    a.send(&add_contact(b_name));
    recv_until(a, |frame| {
        matches!(frame, ServerMessage::Directory(_)).then_some(())
    });
    b.send(&add_contact(a_name));
    recv_until(b, |frame| {
        matches!(frame, ServerMessage::Directory(_)).then_some(())
    });
    for (client, other) in [(a, b_name), (b, a_name)] {
        let online = recv_until(client, |frame| match frame {
            ServerMessage::Presence(p) if p.username == other => Some(p.online),
            _ => None,
        });
        assert!(online, "{other} is online");
    }
}

/// The first Presence of `name` that `client` gets within `wait`.
fn presence_within(client: &mut Client, name: &str, wait: Duration) -> Option<bool> {
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match client.poll(left) {
            Polled::Frame(ServerMessage::Presence(p), _) if p.username == name => {
                return Some(p.online)
            }
            Polled::Frame(..) => {}
            Polled::Quiet => return None,
            Polled::Ended => panic!("the connection ended while waiting for {name}'s presence"),
        }
    }
    None
}

/// Whether `client`'s Directory shows `name` online.
fn directory_says_online(client: &mut Client, name: &str) -> bool {
    client.send(&ClientMessage::GetDirectory);
    let directory = recv_until(client, |frame| match frame {
        ServerMessage::Directory(directory) => Some(directory),
        _ => None,
    });
    directory
        .data
        .iter()
        .any(|entry| entry.username == name && entry.online)
}

/// `GET /healthz` of the server on `port`: the status and the JSON body.
fn healthz(port: u16) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    (status, json)
}

/// Reads what each client is sent for `wait`, so that each answers the
/// server's pings and none is closed as idle; the Presence frames seen, as
/// `(client index, username, online)`.
fn watch(clients: &mut [&mut Client], wait: Duration) -> Vec<(usize, String, bool)> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        for (n, client) in clients.iter_mut().enumerate() {
            match client.poll(Duration::from_millis(20)) {
                Polled::Frame(ServerMessage::Presence(p), _) => {
                    seen.push((n, p.username, p.online))
                }
                Polled::Frame(..) | Polled::Quiet => {}
                Polled::Ended => panic!("client {n} was disconnected"),
            }
        }
    }
    seen
}

/// Presence frames seen by [`watch`]: `(client index, username, online)`.
type Seen = Vec<(usize, String, bool)>;

/// Watches `clients` (see [`watch`]) until `/healthz` of the server on
/// `port` and the Presence frames seen so far satisfy `done`, for at most
/// `wait`; the frames seen and the last answer's body.
fn watch_until(
    port: u16,
    clients: &mut [&mut Client],
    wait: Duration,
    mut done: impl FnMut(u16, &serde_json::Value, &Seen) -> bool,
) -> (Seen, serde_json::Value) {
    let deadline = Instant::now() + wait;
    let mut seen = Vec::new();
    loop {
        seen.extend(watch(clients, Duration::from_millis(250)));
        let (status, health) = healthz(port);
        if done(status, &health, &seen) {
            return (seen, health);
        }
        assert!(
            Instant::now() < deadline,
            "not within {wait:?}: {status} {health} {seen:?}"
        );
    }
}

/// A server killed with SIGKILL never says its users went offline: the
/// others see its heartbeat stop, and a contact on another server is told
/// within `--timeout` (and its Directory agrees). The user then resumes
/// the session on a third server and gets what was sent before the kill
/// and while away.
#[test]
fn a_killed_server_s_users_go_offline_within_the_timeout_and_resume_elsewhere() {
    let Some(mut cluster) = Cluster::start(
        "a_killed_server_s_users_go_offline_within_the_timeout_and_resume_elsewhere",
        3,
        &SHORT_TIMEOUT_ARGS,
    ) else {
        return;
    };
    register_all(cluster.node(0), &["ann", "bob"]);
    let mut ann = logged_in(cluster.node(0), "ann");
    let mut bob = cluster.node(1).client();
    let session = bob
        .login_with_receipts("bob")
        .session_id
        .expect("a session");
    make_mutual(&mut ann, "ann", &mut bob, "bob");
    let before = send_acked(&mut ann, message_to("bob", "before", None));
    assert_eq!(recv_message(&mut bob), (before, "before".into()));

    let killed = Instant::now();
    cluster.nodes[1].kill();
    let told = presence_within(&mut ann, "bob", SHORT_TIMEOUT);
    let after = killed.elapsed();
    assert_eq!(
        told,
        Some(false),
        "bob shown offline ({after:?} after the kill)"
    );
    assert!(after < SHORT_TIMEOUT, "within --timeout: {after:?}");
    assert!(!directory_says_online(&mut ann, "bob"));

    let away: Vec<i64> = (0..3)
        .map(|k| send_acked(&mut ann, message_to("bob", &format!("away {k}"), None)))
        .collect();
    let mut bob = cluster.node(2).client();
    bob.resume_with_receipts("bob", &session);
    let got: Vec<i64> = (0..4).map(|_| recv_message(&mut bob).0).collect();
    let mut expected = vec![before];
    expected.extend(away);
    assert_eq!(got, expected, "nothing unconfirmed is lost");
    assert_eq!(presence_within(&mut ann, "bob", SHORT_TIMEOUT), Some(true));
}

/// A server started after a user logged in elsewhere learns from the
/// database's heartbeats that the user is online (no Presence of theirs
/// ever reached it).
#[test]
fn a_server_started_later_learns_who_is_online() {
    let Some(mut cluster) = Cluster::start(
        "a_server_started_later_learns_who_is_online",
        1,
        &["--timeout", "8"],
    ) else {
        return;
    };
    register_all(cluster.node(0), &["ann", "cat"]);
    let mut ann = logged_in(cluster.node(0), "ann");
    let mut cat = logged_in(cluster.node(0), "cat");
    make_mutual(&mut ann, "ann", &mut cat, "cat");
    drop(cat);

    let later = cluster.add_node(None, None);
    let mut cat = logged_in(cluster.node(later), "cat");
    let deadline = Instant::now() + Duration::from_secs(8);
    while !directory_says_online(&mut cat, "ann") {
        assert!(
            Instant::now() < deadline,
            "the new server never learnt that ann is online"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // And ann, on the first server, saw cat go and come back.
    assert_eq!(presence_within(&mut ann, "cat", SHORT_TIMEOUT), Some(false));
    assert_eq!(presence_within(&mut ann, "cat", SHORT_TIMEOUT), Some(true));
}

/// A Delivered receipt reaches the sender's receipts device on another
/// server than the one where the recipient confirmed.
#[test]
fn delivered_reaches_a_sender_on_another_server() {
    let Some(cluster) = Cluster::start("delivered_reaches_a_sender_on_another_server", 2, &[])
    else {
        return;
    };
    register_all(cluster.node(0), &["ann", "bob"]);
    let mut ann = cluster.node(0).client();
    ann.login_with_receipts("ann");
    let mut bob = cluster.node(1).client();
    bob.login_with_receipts("bob");
    let id = send_acked(&mut ann, message_to("bob", "please confirm", None));
    assert_eq!(recv_message(&mut bob).0, id);
    bob.confirm(id);
    let receipt = recv_until(&mut ann, |frame| match frame {
        ServerMessage::Delivered(receipt) => Some(receipt),
        _ => None,
    });
    assert_eq!((receipt.username.as_str(), receipt.through), ("bob", id));
}

/// `/healthz` names the node and says the bus and the database are fine.
/// Then one server loses NATS: nobody's presence changes (the database
/// says every server is alive), a login elsewhere still reaches its
/// contact there through the heartbeats, `/healthz` says `reconnecting`
/// and stays 200 for its grace, then 503 `bus_down`, and 200 again once
/// NATS is back; the stats line says the same.
#[test]
fn a_nats_outage_keeps_presence_and_shows_in_healthz() {
    let Some(mut cluster) = Cluster::start(
        "a_nats_outage_keeps_presence_and_shows_in_healthz",
        1,
        &[SHORT_TIMEOUT_ARGS.as_slice(), &["--stats-interval", "1"]].concat(),
    ) else {
        return;
    };
    let nats = cluster.nats.url.trim_start_matches("nats://");
    let relay = TcpRelay::start(nats);
    let cut_off = cluster.add_node(Some(&format!("nats://{}", relay.addr)), None);
    for n in [0, cut_off] {
        let (status, health) = healthz(cluster.node(n).port);
        assert_eq!(status, 200, "{health}");
        assert_eq!(health["node"], format!("node{n}"));
        assert_eq!(health["bus"], "connected");
        assert_eq!(health["database"], "ok");
    }
    register_all(cluster.node(0), &["ann", "bob", "cat"]);
    let mut ann = logged_in(cluster.node(0), "ann");
    let mut bob = logged_in(cluster.node(cut_off), "bob");
    make_mutual(&mut ann, "ann", &mut bob, "bob");
    let mut cat = logged_in(cluster.node(0), "cat");
    // Bob adds last, a moment after cat's login: bob's server may not have
    // cat's Presence yet, and cat's server tells both (BecameMutual).
    make_mutual(&mut cat, "cat", &mut bob, "bob");
    drop(cat);
    assert_eq!(presence_within(&mut bob, "cat", SHORT_TIMEOUT), Some(false));

    relay.cut();
    let cut = Instant::now();
    let mut cat = logged_in(cluster.node(0), "cat");
    let mut reconnecting_but_healthy = false;
    let (seen, health) = watch_until(
        cluster.node(cut_off).port,
        &mut [&mut ann, &mut bob, &mut cat],
        Duration::from_secs(20),
        |status, health, _| {
            reconnecting_but_healthy |= status == 200 && health["bus"] == "reconnecting";
            status == 503
        },
    );
    let outage = cut.elapsed();
    assert_eq!(health["status"], "bus_down", "{health}");
    assert_eq!(health["bus"], "reconnecting");
    assert!(reconnecting_but_healthy, "reconnecting, within its grace");
    assert!(
        outage >= Duration::from_secs(9),
        "503 only after the grace: {outage:?}"
    );
    assert!(
        outage > SHORT_TIMEOUT / 2,
        "the outage outlasted the expiry of heartbeats"
    );
    assert!(
        !seen
            .iter()
            .any(|(_, name, online)| !online && name != "cat"),
        "nobody went offline: {seen:?}"
    );
    assert!(
        seen.contains(&(1, "cat".into(), true)),
        "bob heard of cat's login through the database: {seen:?}"
    );
    assert_eq!(healthz(cluster.node(0).port).0, 200, "node0 has its bus");

    relay.restore();
    watch_until(
        cluster.node(cut_off).port,
        &mut [&mut ann, &mut bob, &mut cat],
        Duration::from_secs(20),
        |status, health, _| status == 200 && health["bus"] == "connected",
    );
    assert!(directory_says_online(&mut ann, "bob"));
    assert!(directory_says_online(&mut bob, "ann"));
    // The stats line (every second here) says the same.
    let deadline = Instant::now() + Duration::from_secs(5);
    for state in [
        "bus reconnecting, database ok",
        "bus connected, database ok",
    ] {
        let line = format!("node node1, {state}, 1 other nodes");
        while !cluster.node(cut_off).log_text().contains(&line) {
            assert!(Instant::now() < deadline, "no stats line with {line:?}");
            watch(
                &mut [&mut ann, &mut bob, &mut cat],
                Duration::from_millis(250),
            );
        }
    }
}

/// `url` with its `host[:port]` replaced by `address` (the rest kept).
fn with_address(url: &str, address: &str) -> String {
    let start = url.find("://").map_or(0, |at| at + 3);
    let authority_end = url[start..].find('/').map_or(url.len(), |at| start + at);
    let host_start = url[start..authority_end]
        .rfind('@')
        .map_or(start, |at| start + at + 1);
    format!("{}{address}{}", &url[..host_start], &url[authority_end..])
}

/// The `HOST:PORT` a PostgreSQL URL points at.
fn postgres_address(url: &str) -> String {
    let config: postgres::Config = url.parse().expect("a PostgreSQL URL");
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// A server that loses PostgreSQL says so: `/healthz` is 503
/// `database_unreachable` and the others, seeing its heartbeat stop, show
/// its users offline (it can store nothing). Once the database is back it
/// beats again, and its users are online again everywhere.
#[test]
fn a_server_without_its_database_is_unhealthy_and_its_users_look_offline() {
    let Some(mut cluster) = Cluster::start(
        "a_server_without_its_database_is_unhealthy_and_its_users_look_offline",
        1,
        &SHORT_TIMEOUT_ARGS,
    ) else {
        return;
    };
    let relay = TcpRelay::start(&postgres_address(&cluster.database.url));
    let through_relay = with_address(&cluster.database.url, &relay.addr.to_string());
    let cut_off = cluster.add_node(None, Some(&through_relay));
    register_all(cluster.node(0), &["ann", "bob"]);
    let mut bob = logged_in(cluster.node(0), "bob");
    let mut ann = logged_in(cluster.node(cut_off), "ann");
    make_mutual(&mut bob, "bob", &mut ann, "ann");

    relay.cut();
    let (_, health) = watch_until(
        cluster.node(cut_off).port,
        &mut [&mut bob, &mut ann],
        SHORT_TIMEOUT,
        |status, _, _| status == 503,
    );
    assert_eq!(health["status"], "database_unreachable", "{health}");
    assert_eq!(health["database"], "unreachable");
    assert_eq!(health["bus"], "connected");
    // Bob, on the server that has the database, sees ann go.
    watch_until(
        cluster.node(0).port,
        &mut [&mut bob, &mut ann],
        SHORT_TIMEOUT,
        |_, _, seen| seen.contains(&(0, "ann".into(), false)),
    );
    assert_eq!(
        healthz(cluster.node(0).port).0,
        200,
        "node0 has its database"
    );

    relay.restore();
    let (_, health) = watch_until(
        cluster.node(cut_off).port,
        &mut [&mut bob, &mut ann],
        SHORT_TIMEOUT * 2,
        |status, _, seen| status == 200 && seen.contains(&(0, "ann".into(), true)),
    );
    assert_eq!(health["database"], "ok");
}
