//! A fresh PostgreSQL database per test ([`TestDatabase`]), made on the
//! server `CHAT_TEST_POSTGRES` names (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, which needs the right to
//! create databases) and dropped when the test ends, panicking or not.
//!
//! Where no PostgreSQL answers, [`TestDatabase::create`] prints
//! `SKIPPED <test>: no PostgreSQL at <url>` and returns `None`, so the test
//! returns early — unless `CI=true`, where it panics: CI must run them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The administrative connection's URL when `CHAT_TEST_POSTGRES` is unset.
const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long the harness waits for PostgreSQL to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The advisory lock test processes take turns under to create databases.
const CREATE_LOCK: i64 = 0x6368_6174_7465_7374;

/// Databases made by this test process so far (their names' suffix).
static CREATED: AtomicUsize = AtomicUsize::new(0);

/// A database that exists for one test: `chat_t_<pid>_<n>`.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    /// Its URL, for `--database`.
    pub url: String,
}

impl TestDatabase {
    /// A new empty database, or `None` (after saying `SKIPPED test: …` on
    /// stderr) when PostgreSQL cannot be reached and `CI` is not `true`.
    pub fn create(test: &str) -> Option<TestDatabase> {
        let admin_url =
            std::env::var("CHAT_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into());
        let mut admin = match admin_client(&admin_url) {
            Ok(client) => client,
            Err(error) => {
                if std::env::var("CI").is_ok_and(|ci| ci == "true") {
                    panic!("{test}: no PostgreSQL at {admin_url} (CI=true needs one): {error}");
                }
                // Written to the stream itself: the test harness captures
                // `eprintln!` of passing tests, and a skip must be seen.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {test}: no PostgreSQL at {admin_url} ({error})"
                );
                return None;
            }
        };
        let n = CREATED.fetch_add(1, Ordering::Relaxed);
        let name = format!("chat_t_{}_{n}", std::process::id());
        // CREATE DATABASE copies template1 and fails while another session
        // is copying it: tests running in parallel take turns.
        // (One statement per call: several would be one transaction, where
        // CREATE DATABASE cannot run.)
        for statement in [
            format!("SELECT pg_advisory_lock({CREATE_LOCK})"),
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
            format!("SELECT pg_advisory_unlock({CREATE_LOCK})"),
        ] {
            admin
                .batch_execute(&statement)
                .unwrap_or_else(|error| panic!("create database {name}: {error:?}"));
        }
        let url = with_database(&admin_url, &name);
        Some(TestDatabase {
            admin_url,
            name,
            url,
        })
    }

    /// A connection to this database, to look at what the server stored.
    pub fn connect(&self) -> postgres::Client {
        admin_client(&self.url).unwrap_or_else(|error| panic!("connect to {}: {error}", self.url))
    }

    /// Cuts every connection to this database and refuses new ones until
    /// [`TestDatabase::reopen`]: what a PostgreSQL restart looks like to
    /// the servers using it, without touching other tests' databases.
    pub fn cut_off(&self) {
        let mut admin = self.admin();
        for statement in [
            format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", self.name),
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{}' AND pid <> pg_backend_pid()",
                self.name
            ),
        ] {
            admin
                .batch_execute(&statement)
                .unwrap_or_else(|error| panic!("cut off {}: {error:?}", self.name));
        }
    }

    /// Accepts connections again after [`TestDatabase::cut_off`].
    pub fn reopen(&self) {
        self.admin()
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS true",
                self.name
            ))
            .unwrap_or_else(|error| panic!("reopen {}: {error:?}", self.name));
    }

    fn admin(&self) -> postgres::Client {
        admin_client(&self.admin_url)
            .unwrap_or_else(|error| panic!("connect to {}: {error}", self.admin_url))
    }

    /// Every message stored (`id → content`).
    pub fn stored_messages(&self) -> std::collections::BTreeMap<i64, String> {
        self.connect()
            .query("SELECT message_id, content FROM messages", &[])
            .expect("read messages")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let dropped = admin_client(&self.admin_url).and_then(|mut admin| {
            admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
        });
        if let Err(error) = dropped {
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}

fn admin_client(url: &str) -> Result<postgres::Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    config.connect_timeout(CONNECT_TIMEOUT);
    config.connect(postgres::NoTls)
}

/// `url` with its database (the path after the host) replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}
