//! The fault-injection checker: the real binary driven the way Jepsen drives a
//! database — seeded and reproducible — with faults at random moments, then
//! every promise of the delivery model checked against what clients saw and
//! what the database holds.
//!
//! Users have two receipts devices each (and the first user one device
//! without receipts). They send 1:1 and group messages, pipelined, with
//! client ids and request ids. Faults: connections dropped mid-login,
//! mid-queue and mid-read (a dropped device resends what it never got an
//! answer for, on its next connection, with the same client id), logouts and
//! new sessions (of the device without receipts: a receipts device that
//! starts a new session is owed only what no device took before it began, a
//! moment no client can observe exactly, so `delivery.rs` tests that case
//! deterministically instead), `SIGKILL` and restart, and a full disk
//! (RLIMIT_FSIZE) for a while. At the end every device resumes and drains, and the checker asserts:
//! - every acked message is held by every receipts device of every recipient
//!   (all other members, for a group), exactly once by id;
//! - no id names two different messages anywhere (devices, database);
//! - every message a device holds is in the database under its id (nothing
//!   is delivered that will not be kept);
//! - no device holds a message whose sender was refused for good and never
//!   acked (`server_busy` is not for good: it says "try again", and the
//!   devices do, with the same client id, on their next connection and at
//!   the end — as a client must, since a resend of a message whose Ack was
//!   lost can meet a server that cannot look it up just then);
//! - on every device, messages from one sender arrive in increasing id order;
//! - a client id is stored at most once, however often it was resent.
//!
//! `CHAOS_SEED` replays a run (the seed is printed first); `CHAOS_SECONDS`
//! sets the length of the fault phase (default 20; `scripts/chaos.sh` runs
//! longer and many seeds).
//!
//! `delivery_survives_faults_on_postgres` runs the same checker against the
//! PostgreSQL backend (`--database`), with a shorter fault phase (10 s
//! unless `CHAOS_SECONDS` says) and without the full disk (the server writes no database file of
//! its own there), with PostgreSQL outages instead: every connection to its
//! database cut and new ones refused for a while (what a PostgreSQL restart
//! looks like to the server, without disturbing other tests' databases); it
//! is skipped, saying so, where no PostgreSQL answers.
//!
//! `delivery_survives_faults_in_a_cluster` runs it against three servers
//! (`--nats`) on one PostgreSQL database and a NATS server of the test's own
//! (`nats-server` on a free port). Devices connect to a random running
//! server each time, so sessions resume and resends arrive on other
//! servers. Its faults add `SIGKILL` of one server (started again a moment
//! later), a NATS restart (SIGKILL, then started again on the same port)
//! and the PostgreSQL outage above. It is skipped, saying so, without
//! PostgreSQL or a `nats-server` binary, and fails instead with `CI=true`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use common::nats::{own_nats_for, OwnNats};
use common::postgres_db::TestDatabase;
use common::{register_all, Client, Polled, TestServer, SECRET};
use protocol::client::{Login, Logout, Received, SendMessage};
use protocol::{ClientMessage, ErrorType, ServerMessage};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const USERS: usize = 4;
const RECEIPTS_DEVICES_PER_USER: usize = 2;
/// How long the end phase waits for every device to catch up.
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);
/// Messages a device may have unanswered before it stops sending.
const WINDOW: usize = 16;
/// Servers in the cluster run.
const CLUSTER_NODES: usize = 3;
/// How long after an outage begins or ends the next may begin: time for
/// traffic between faults.
const CALM_BETWEEN_OUTAGES: Duration = Duration::from_secs(1);
/// The fault phase of the SQLite run, unless `CHAOS_SECONDS` says.
const SQLITE_PHASE: Duration = Duration::from_secs(20);
/// The fault phase of the PostgreSQL and cluster runs (whose restarts take
/// longer), unless `CHAOS_SECONDS` says.
const DATABASE_PHASE: Duration = Duration::from_secs(10);

/// What the checker runs against.
enum Setup {
    /// One server on its SQLite file.
    Sqlite,
    /// One server on a PostgreSQL database.
    Postgres(TestDatabase),
    /// [`CLUSTER_NODES`] servers on one PostgreSQL database and one NATS.
    Cluster(TestDatabase, OwnNats),
}

/// Something that is down until a moment comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outage {
    /// A server killed with SIGKILL, started again when the outage ends.
    Node(usize),
    /// The cluster's NATS server, killed with SIGKILL.
    Nats,
    /// The PostgreSQL database: connections cut, new ones refused.
    Database,
}

/// Where a message was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dest {
    User(usize),
    Group,
}

/// What the sender knows about one client id.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Sent, no answer yet (or the connection died before one came).
    Unanswered,
    /// Acked with this server id.
    Acked(i64),
    /// Refused with an error and never acked.
    Refused,
}

struct Sent {
    sender: usize,
    dest: Dest,
    content: String,
    outcome: Outcome,
    /// What the server said when it refused it, for the failure message.
    refusal: Option<String>,
}

struct Device {
    user: usize,
    receipts: bool,
    /// The server the current connection is on.
    node: usize,
    session: Option<String>,
    conn: Option<Client>,
    /// Whether the current connection got its SuccessLogin.
    logged_in: bool,
    /// Every message this device holds, by id.
    held: BTreeMap<i64, String>,
    /// The highest id received on the current connection.
    highest_on_connection: i64,
    confirmed: i64,
    /// Client ids sent on the current connection and not yet answered.
    in_flight: BTreeSet<String>,
    /// Per sender, the last id first seen from them and the connection
    /// it came on (order check).
    last_from: HashMap<String, (i64, u32)>,
    /// Connections made so far.
    connections: u32,
    /// Whether order is checked per connection rather than across them
    /// (the device without receipts, in the cluster: see `connect`).
    order_per_connection: bool,
    order_violations: Vec<String>,
}

struct Chaos {
    rng: StdRng,
    /// The servers (one, but for the cluster run).
    nodes: Vec<TestServer>,
    names: Vec<String>,
    devices: Vec<Device>,
    sent: BTreeMap<String, Sent>,
    group_id: i64,
    next_seq: Vec<u64>,
    disk_full_until: Option<Instant>,
    log: Vec<String>,
    /// The PostgreSQL database the servers run on, if not SQLite.
    database: Option<TestDatabase>,
    /// The cluster run's own NATS server.
    nats: Option<OwnNats>,
    /// What is down now, and until when.
    outages: Vec<(Outage, Instant)>,
    /// No outage begins before this.
    calm_until: Instant,
    /// `server_busy` answers to sends (each sent again later).
    busy_refusals: usize,
    /// The end phase: every device drains and every send is answered.
    draining: bool,
}

fn seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(text) => text.parse().expect("CHAOS_SEED must be an integer"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

/// `CHAOS_SECONDS`, or `default`.
fn fault_phase(default: Duration) -> Duration {
    std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .map_or(default, Duration::from_secs)
}

#[test]
fn delivery_survives_faults() {
    run(Setup::Sqlite, fault_phase(SQLITE_PHASE));
}

#[test]
fn delivery_survives_faults_on_postgres() {
    let Some(database) = TestDatabase::create("delivery_survives_faults_on_postgres") else {
        return;
    };
    run(Setup::Postgres(database), fault_phase(DATABASE_PHASE));
}

#[test]
fn delivery_survives_faults_in_a_cluster() {
    let test = "delivery_survives_faults_in_a_cluster";
    let Some(database) = TestDatabase::create(test) else {
        return;
    };
    let Some(nats) = own_nats_for(test) else {
        return;
    };
    run(Setup::Cluster(database, nats), fault_phase(DATABASE_PHASE));
}

/// One seeded run of `phase` faults, then the checks.
fn run(setup: Setup, phase: Duration) {
    let seed = seed();
    println!("chaos seed {seed} (replay: CHAOS_SEED={seed} cargo test -p server --test chaos)");
    let mut chaos = Chaos::new(seed, setup);
    let end = Instant::now() + phase;
    while Instant::now() < end {
        chaos.step();
    }
    chaos.finish();
    chaos.check();
    println!(
        "chaos seed {seed}: {} messages sent, {} acked, {} server_busy answers (sent again), \
         {} faults ({})",
        chaos.sent.len(),
        chaos.acked().count(),
        chaos.busy_refusals,
        chaos.log.len(),
        chaos.fault_counts()
    );
}

impl Chaos {
    fn new(seed: u64, setup: Setup) -> Chaos {
        let (database, nats) = match setup {
            Setup::Sqlite => (None, None),
            Setup::Postgres(database) => (Some(database), None),
            Setup::Cluster(database, nats) => (Some(database), Some(nats)),
        };
        let nodes = start_nodes(database.as_ref(), nats.as_ref());
        let names: Vec<String> = (0..USERS).map(|u| format!("user{u}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        register_all(&nodes[0], &refs);
        let mut devices = Vec::new();
        for user in 0..USERS {
            for _ in 0..RECEIPTS_DEVICES_PER_USER {
                devices.push(Device::new(user, true));
            }
        }
        let mut legacy = Device::new(0, false);
        legacy.order_per_connection = nats.is_some();
        devices.push(legacy);
        let mut chaos = Chaos {
            rng: StdRng::seed_from_u64(seed),
            nodes,
            names,
            devices,
            sent: BTreeMap::new(),
            group_id: 0,
            next_seq: vec![0; USERS],
            disk_full_until: None,
            log: Vec::new(),
            database,
            nats,
            outages: Vec::new(),
            calm_until: Instant::now(),
            busy_refusals: 0,
            draining: false,
        };
        chaos.group_id = chaos.create_group();
        for index in 0..chaos.devices.len() {
            chaos.connect(index);
        }
        // Every session begins before the first message: a receipts session
        // is owed all that was not taken before it began, so from here on
        // that is everything.
        let deadline = Instant::now() + DRAIN_DEADLINE;
        while !chaos.devices.iter().all(|device| device.logged_in) {
            assert!(Instant::now() < deadline, "the first logins never finished");
            for index in 0..chaos.devices.len() {
                chaos.connect(index);
                chaos.read(index, Duration::from_millis(5));
            }
        }
        chaos
    }

    /// How many faults of each kind the log holds (`drop: 40, …`).
    fn fault_counts(&self) -> String {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for entry in &self.log {
            let what = entry.split(':').next().unwrap_or(entry);
            let kind: Vec<&str> = what
                .split_whitespace()
                .filter(|word| !word.chars().all(|c| c.is_ascii_digit()))
                .collect();
            *counts.entry(kind.join(" ")).or_default() += 1;
        }
        let counts: Vec<String> = counts
            .iter()
            .map(|(kind, count)| format!("{kind}: {count}"))
            .collect();
        counts.join(", ")
    }

    fn create_group(&mut self) -> i64 {
        let mut creator = common::logged_in(&self.nodes[0], &self.names[0]);
        creator.send(&ClientMessage::CreateGroup(protocol::client::CreateGroup {
            name: "everyone".into(),
            members: self.names[1..].to_vec(),
        }));
        match creator.recv() {
            ServerMessage::GroupInfo(info) => info.group_id,
            other => panic!("expected GroupInfo, got {other:?}"),
        }
    }

    /// One random action.
    fn step(&mut self) {
        self.end_full_disk_when_due();
        self.end_outages_when_due();
        let roll = self.rng.random_range(0..1000);
        let index = self.rng.random_range(0..self.devices.len());
        match roll {
            0..=399 => self.send_random(index),
            400..=849 => self.read(index, Duration::from_millis(5)),
            850..=919 => self.drop_connection(index, "drop"),
            920..=969 => self.connect(index),
            970..=984 => self.logout_and_login(self.devices.len() - 1),
            985..=993 => self.crash(),
            _ => self.outage(),
        }
    }

    fn send_random(&mut self, index: usize) {
        let device = &self.devices[index];
        if !device.logged_in || device.in_flight.len() >= WINDOW {
            return self.read(index, Duration::from_millis(1));
        }
        let sender = device.user;
        let dest = match self.rng.random_range(0..4) {
            0 => Dest::Group,
            _ => Dest::User((sender + self.rng.random_range(1..USERS)) % USERS),
        };
        let seq = self.next_seq[sender];
        self.next_seq[sender] += 1;
        let client_id = format!("u{sender}-{seq}");
        let padding = "x".repeat(self.padding_len());
        let content = format!("{client_id}|{padding}");
        self.sent.insert(
            client_id.clone(),
            Sent {
                sender,
                dest,
                content,
                outcome: Outcome::Unanswered,
                refusal: None,
            },
        );
        self.send_message(index, &client_id);
    }

    /// Mostly small messages, now and then a large one (slow readers).
    fn padding_len(&mut self) -> usize {
        match self.rng.random_range(0..50) {
            0 => 60 * 1024,
            1..=5 => 4 * 1024,
            _ => 16,
        }
    }

    fn send_message(&mut self, index: usize, client_id: &str) {
        let sent = &self.sent[client_id];
        let (dest_id, group_id) = match sent.dest {
            Dest::User(user) => (Some(self.names[user].clone()), None),
            Dest::Group => (None, Some(self.group_id)),
        };
        let message = ClientMessage::Message(SendMessage {
            dest_id,
            group_id,
            content: sent.content.clone(),
            message_id: Some(client_id.to_owned()),
            source_id: None,
            is_encrypted: false,
        });
        let device = &mut self.devices[index];
        let Some(conn) = device.conn.as_mut() else {
            return;
        };
        if conn.try_send_with_id(&message, client_id).is_ok() {
            device.in_flight.insert(client_id.to_owned());
        } else {
            self.drop_connection(index, "send failed");
        }
    }

    /// Reads what arrives on `index` within `wait` (and everything already
    /// there), confirming on a receipts device.
    fn read(&mut self, index: usize, wait: Duration) {
        let mut wait = wait;
        loop {
            let Some(conn) = self.devices[index].conn.as_mut() else {
                return;
            };
            match conn.poll(wait) {
                Polled::Frame(frame, request_id) => {
                    self.on_frame(index, frame, request_id.map(|id| id.to_string()))
                }
                Polled::Quiet => break,
                Polled::Ended => {
                    self.drop_connection(index, "ended by the server");
                    return;
                }
            }
            wait = Duration::from_millis(1);
        }
        self.confirm(index);
    }

    fn on_frame(&mut self, index: usize, frame: ServerMessage, request_id: Option<String>) {
        match frame {
            ServerMessage::SuccessLogin(ok) => {
                let device = &mut self.devices[index];
                device.logged_in = true;
                if device.receipts && device.session.is_none() {
                    device.session = ok.session_id;
                }
                self.resend_unanswered(index);
            }
            ServerMessage::FailLogin(_) => {
                self.devices[index].session = None;
                self.drop_connection(index, "login failed");
            }
            ServerMessage::Message(message) => self.devices[index].hold(message),
            ServerMessage::Ack(ack) => {
                let client_id = ack.client_message_id.unwrap_or_default();
                self.devices[index].in_flight.remove(&client_id);
                if let Some(sent) = self.sent.get_mut(&client_id) {
                    if let Outcome::Acked(first) = sent.outcome {
                        assert_eq!(first, ack.message_id, "{client_id} acked with two ids");
                    }
                    sent.outcome = Outcome::Acked(ack.message_id);
                }
            }
            ServerMessage::Error(error) if error.ref_tag == Some(11) => {
                let client_id = request_id.unwrap_or_default();
                self.devices[index].in_flight.remove(&client_id);
                if error.error_type == ErrorType::ServerBusy {
                    // Sent again later (still unanswered), as a client
                    // does: on the next connection, or now at the end.
                    self.busy_refusals += 1;
                    if self.draining {
                        self.send_message(index, &client_id);
                    }
                    return;
                }
                if let Some(sent) = self.sent.get_mut(&client_id) {
                    if sent.outcome == Outcome::Unanswered {
                        sent.outcome = Outcome::Refused;
                        sent.refusal = Some(format!("{:?}: {}", error.error_type, error.detail));
                    }
                }
            }
            _ => {}
        }
    }

    /// A receipts device confirms everything up to the highest id it got on
    /// this connection (pushes come in id order).
    fn confirm(&mut self, index: usize) {
        let device = &mut self.devices[index];
        if !device.receipts || !device.logged_in || device.highest_on_connection <= device.confirmed
        {
            return;
        }
        let through = device.highest_on_connection;
        let Some(conn) = device.conn.as_mut() else {
            return;
        };
        let received = ClientMessage::Received(Received { through });
        if conn.try_send(&received).is_ok() {
            device.confirmed = through;
        }
    }

    /// The messages this device sent and never got an answer for go out
    /// again, same client id, on its new connection.
    fn resend_unanswered(&mut self, index: usize) {
        let user = self.devices[index].user;
        let owner = self.owner_device(user);
        if owner != index {
            return;
        }
        let unanswered: Vec<String> = self
            .sent
            .iter()
            .filter(|(_, sent)| sent.sender == user && sent.outcome == Outcome::Unanswered)
            .map(|(id, _)| id.clone())
            .collect();
        for client_id in unanswered {
            self.send_message(index, &client_id);
        }
    }

    /// The device that resends a user's unanswered messages (its first).
    fn owner_device(&self, user: usize) -> usize {
        self.devices
            .iter()
            .position(|device| device.user == user)
            .unwrap_or(0)
    }

    fn drop_connection(&mut self, index: usize, why: &str) {
        let device = &mut self.devices[index];
        if device.conn.take().is_some() {
            self.log.push(format!("{why}: device {index}"));
        }
        device.logged_in = false;
        device.in_flight.clear();
        device.highest_on_connection = device.confirmed;
    }

    /// (Re)connects: a receipts device resumes its session (or logs in with
    /// the password the first time); the other logs in with the password.
    /// Does not wait for the answer: reads handle it, so a drop can hit
    /// mid-login or mid-queue.
    fn connect(&mut self, index: usize) {
        if self.devices[index].conn.is_some() {
            return self.read(index, Duration::from_millis(1));
        }
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| self.nodes[n].is_running())
            .collect();
        if running.is_empty() {
            return;
        }
        let node = running[self.rng.random_range(0..running.len())];
        let Ok(mut conn) = Client::try_connect(self.nodes[node].port) else {
            return;
        };
        self.devices[index].node = node;
        let device = &self.devices[index];
        let login = Login {
            username: self.names[device.user].clone(),
            secret: device.session.is_none().then(|| SECRET.to_owned()),
            session_id: device.session.clone(),
            receipts: device.receipts,
        };
        if conn.try_send(&ClientMessage::Login(login)).is_ok() {
            let device = &mut self.devices[index];
            // In a cluster, what an earlier connection of a device without
            // receipts did not write goes back in the queue when the
            // server it was on sees it end — which may be after this
            // login, on another server, was pushed later messages: it then
            // comes at a later login, after them. Within a connection the
            // order holds (seen: "340 (connection 35) after 342
            // (connection 34)" with the check across connections).
            device.connections += 1;
            if device.order_per_connection {
                device.last_from.clear();
            }
            device.conn = Some(conn);
            device.highest_on_connection = device.confirmed;
        }
    }

    /// Logout (ending the session) and a fresh password login.
    fn logout_and_login(&mut self, index: usize) {
        let device = &mut self.devices[index];
        if let (true, Some(conn)) = (device.logged_in, device.conn.as_mut()) {
            let _ = conn.try_send(&ClientMessage::Logout(Logout::default()));
            self.log.push(format!("logout: device {index}"));
        }
        // Whatever arrives before the close still counts as held.
        self.read(index, Duration::from_millis(20));
        self.drop_connection(index, "logout");
        self.devices[index].session = None;
        self.devices[index].confirmed = 0;
        self.devices[index].highest_on_connection = 0;
        self.connect(index);
    }

    /// SIGKILL: the SQLite server is started again at once; on PostgreSQL
    /// a server stays down for a moment (started again once the database
    /// is back, if it is out), in the cluster while another one runs.
    fn crash(&mut self) {
        if self.database.is_none() {
            self.log.push("SIGKILL and restart".into());
            self.drop_connections_to(0, "crash");
            self.nodes[0].crash_and_restart_with_file_size_limit(None);
            self.disk_full_until = None;
            return;
        }
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| self.nodes[n].is_running())
            .collect();
        let keep_one = self.nats.is_some();
        if Instant::now() < self.calm_until || running.is_empty() || (keep_one && running.len() < 2)
        {
            return;
        }
        let node = running[self.rng.random_range(0..running.len())];
        self.log.push(format!("SIGKILL node {node}"));
        self.drop_connections_to(node, "node killed");
        self.nodes[node].kill();
        self.begin_outage(Outage::Node(node));
    }

    fn drop_connections_to(&mut self, node: usize, why: &str) {
        for index in 0..self.devices.len() {
            if self.devices[index].node == node {
                self.drop_connection(index, why);
            }
        }
    }

    /// Something the servers depend on goes away for a while: the disk
    /// (SQLite), the database (PostgreSQL), or the database or NATS (the
    /// cluster); one at a time.
    fn outage(&mut self) {
        if self.database.is_none() {
            return self.fill_disk();
        }
        let busy = self
            .outages
            .iter()
            .any(|(outage, _)| matches!(outage, Outage::Database | Outage::Nats));
        if busy || Instant::now() < self.calm_until {
            return;
        }
        let nats_too = self.nats.is_some();
        if nats_too && self.rng.random_bool(0.5) {
            self.log.push("NATS killed".into());
            if let Some(nats) = &mut self.nats {
                nats.kill();
            }
            self.begin_outage(Outage::Nats);
        } else {
            self.log.push("database cut off".into());
            if let Some(database) = &self.database {
                database.cut_off();
            }
            self.begin_outage(Outage::Database);
        }
    }

    /// Ends `outage` between 0.3 and 2 s from now.
    fn begin_outage(&mut self, outage: Outage) {
        let length = Duration::from_millis(self.rng.random_range(300..2000));
        self.outages.push((outage, Instant::now() + length));
        self.calm_until = Instant::now() + CALM_BETWEEN_OUTAGES;
    }

    /// Ends the outages that are due (all of them with `all`). A server is
    /// started again only once NATS and the database are back: a start
    /// needs both.
    fn end_outages(&mut self, all: bool) {
        let now = Instant::now();
        let (due, mut left): (Vec<_>, Vec<_>) = std::mem::take(&mut self.outages)
            .into_iter()
            .partition(|(_, until)| all || *until <= now);
        let due_is_empty = due.is_empty();
        let mut nodes = Vec::new();
        for (outage, until) in due {
            match outage {
                Outage::Nats => {
                    self.log.push("NATS started".into());
                    if let Some(nats) = &mut self.nats {
                        nats.start();
                    }
                }
                Outage::Database => {
                    self.log.push("database reopened".into());
                    if let Some(database) = &self.database {
                        database.reopen();
                    }
                }
                Outage::Node(node) => nodes.push((node, until)),
            }
        }
        if !due_is_empty {
            self.calm_until = now + CALM_BETWEEN_OUTAGES;
        }
        let dependencies_up = left.is_empty();
        for (node, until) in nodes {
            if dependencies_up {
                self.log.push(format!("node {node} started"));
                self.nodes[node].start_again_with_free_disk();
            } else {
                left.push((Outage::Node(node), until));
            }
        }
        self.outages = left;
    }

    fn end_outages_when_due(&mut self) {
        self.end_outages(false);
    }

    /// Caps the server's files just above their size now: writes fail (the
    /// disk is full) until the cap is lifted a couple of seconds later.
    fn fill_disk(&mut self) {
        if self.disk_full_until.is_some() || self.database.is_some() {
            return;
        }
        self.log.push("disk full".into());
        let limit = largest_file(self.nodes[0].data_dir()) + 16 * 1024;
        self.nodes[0].set_file_size_limit(Some(limit));
        self.disk_full_until = Some(Instant::now() + Duration::from_secs(2));
    }

    fn end_full_disk_when_due(&mut self) {
        if self
            .disk_full_until
            .is_some_and(|until| Instant::now() >= until)
        {
            self.log.push("disk freed".into());
            self.nodes[0].set_file_size_limit(None);
            self.disk_full_until = None;
        }
    }

    /// The end: every outage over, a last SIGKILL and restart (of one
    /// server, in the cluster), every device reconnects, every unanswered
    /// message is resent until answered, and every receipts device reads
    /// until it holds everything acked for its user.
    fn finish(&mut self) {
        self.draining = true;
        self.end_outages(true);
        let node = self.rng.random_range(0..self.nodes.len());
        self.nodes[node].crash_and_restart_with_file_size_limit(None);
        for index in 0..self.devices.len() {
            self.drop_connection(index, "final restart");
        }
        let deadline = Instant::now() + DRAIN_DEADLINE;
        while !self.caught_up() {
            assert!(
                Instant::now() < deadline,
                "devices never caught up: {}",
                self.lag()
            );
            for index in 0..self.devices.len() {
                self.connect(index);
                self.read(index, Duration::from_millis(20));
            }
        }
    }

    fn caught_up(&self) -> bool {
        let unanswered = self.sent.values().any(|s| s.outcome == Outcome::Unanswered);
        !unanswered
            && self
                .devices
                .iter()
                .filter(|device| device.receipts)
                .all(|device| self.missing(device).is_empty())
    }

    fn lag(&self) -> String {
        let unanswered = self
            .sent
            .values()
            .filter(|s| s.outcome == Outcome::Unanswered)
            .count();
        let mut report = format!("{unanswered} unanswered");
        for (index, device) in self.devices.iter().enumerate() {
            let missing = self.missing(device);
            if device.receipts && !missing.is_empty() {
                let first: Vec<i64> = missing.iter().take(5).copied().collect();
                report += &format!(
                    "; device {index} (user{}, confirmed {}) misses {} e.g. {first:?}",
                    device.user,
                    device.confirmed,
                    missing.len()
                );
            }
        }
        report
    }

    fn acked(&self) -> impl Iterator<Item = (&String, &Sent, i64)> {
        self.sent
            .iter()
            .filter_map(|(id, sent)| match sent.outcome {
                Outcome::Acked(message_id) => Some((id, sent, message_id)),
                _ => None,
            })
    }

    /// Acked messages addressed to the device's user that it does not hold.
    fn missing(&self, device: &Device) -> Vec<i64> {
        self.acked()
            .filter(|(_, sent, _)| match sent.dest {
                Dest::User(user) => user == device.user,
                Dest::Group => sent.sender != device.user,
            })
            .filter(|(_, _, id)| !device.held.contains_key(id))
            .map(|(_, _, id)| id)
            .collect()
    }

    fn check(&mut self) {
        for (index, device) in self.devices.iter().enumerate() {
            if device.receipts {
                let missing = self.missing(device);
                assert!(
                    missing.is_empty(),
                    "device {index} lost acked messages {missing:?}"
                );
            }
            assert!(
                device.order_violations.is_empty(),
                "device {index}: {:?}",
                device.order_violations
            );
        }
        let mut names: HashMap<i64, &str> = HashMap::new();
        for device in &self.devices {
            for (id, content) in &device.held {
                let first = names.entry(*id).or_insert(content);
                assert_eq!(*first, content.as_str(), "id {id} names two messages");
                let client_id = client_id_of(content);
                let sent = &self.sent[client_id];
                assert_ne!(
                    sent.outcome,
                    Outcome::Refused,
                    "{client_id} is held but its sender was refused ({:?}) and never acked",
                    sent.refusal
                );
                assert_eq!(sent.content, *content, "{client_id} arrived changed");
            }
        }
        for node in &mut self.nodes {
            node.stop_gracefully();
        }
        let stored = match &self.database {
            Some(database) => database.stored_messages(),
            None => self.nodes[0].stored_messages(),
        };
        let mut per_client_id: HashMap<&str, usize> = HashMap::new();
        for (id, content) in &stored {
            *per_client_id.entry(client_id_of(content)).or_default() += 1;
            if let Some(seen) = names.get(id) {
                assert_eq!(seen, content, "id {id}: devices and database disagree");
            }
        }
        for (client_id, count) in per_client_id {
            assert_eq!(count, 1, "{client_id} stored {count} times");
        }
        for (id, content) in &names {
            assert!(
                stored.get(id).is_some_and(|kept| kept == content),
                "id {id} is held by a device but not kept in the database"
            );
        }
        for (client_id, _, id) in self.acked() {
            assert!(
                stored
                    .get(&id)
                    .is_some_and(|c| client_id_of(c) == client_id),
                "acked {client_id} (id {id}) is not in the database"
            );
        }
    }
}

impl Device {
    fn new(user: usize, receipts: bool) -> Device {
        Device {
            user,
            receipts,
            node: 0,
            session: None,
            conn: None,
            logged_in: false,
            held: BTreeMap::new(),
            highest_on_connection: 0,
            confirmed: 0,
            in_flight: BTreeSet::new(),
            last_from: HashMap::new(),
            connections: 0,
            order_per_connection: false,
            order_violations: Vec::new(),
        }
    }

    fn hold(&mut self, message: protocol::server::Delivered) {
        let id = message.message_id;
        self.highest_on_connection = self.highest_on_connection.max(id);
        if self.held.contains_key(&id) {
            return; // a duplicate by id: the client drops it
        }
        let connection = self.connections;
        let last = self
            .last_from
            .entry(message.source_id.clone())
            .or_insert((0, connection));
        if id < last.0 {
            let from = &message.source_id;
            let (last_id, last_connection) = *last;
            self.order_violations.push(format!(
                "{id} from {from} (connection {connection}) after {last_id} (connection {last_connection})"
            ));
        }
        if id > last.0 {
            *last = (id, connection);
        }
        self.held.insert(id, message.content);
    }
}

/// The servers of a run: one on SQLite or on `database`, or, with `nats`,
/// [`CLUSTER_NODES`] on `database` and `nats`.
fn start_nodes(database: Option<&TestDatabase>, nats: Option<&OwnNats>) -> Vec<TestServer> {
    let mut args = vec!["--no-rate-limits".to_string()];
    if let Some(database) = database {
        args.extend(["--database".to_string(), database.url.clone()]);
    }
    let Some(nats) = nats else {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        return vec![TestServer::start(&args)];
    };
    args.extend([
        "--nats".to_string(),
        nats.url.clone(),
        "--nats-prefix".to_string(),
        nats.prefix.clone(),
    ]);
    (0..CLUSTER_NODES)
        .map(|n| {
            let node_id = format!("node{n}");
            let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
            args.extend(["--node-id", &node_id]);
            TestServer::start(&args)
        })
        .collect()
}

fn client_id_of(content: &str) -> &str {
    content.split('|').next().unwrap_or(content)
}

fn largest_file(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.metadata().ok())
                .map(|meta| meta.len())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}
