//! For storage unit tests: a PostgreSQL schema of their own
//! ([`TestSchema`]), in the database `CHAT_TEST_POSTGRES` names (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped when the test
//! case ends. Without a PostgreSQL the test says `SKIPPED` on stderr and
//! returns, unless `CI=true`, where it fails.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Schemas made by this test process so far (their names' suffix).
static CREATED: AtomicUsize = AtomicUsize::new(0);

/// A schema that exists for one test case: `chat_u_<pid>_<n>`.
pub(crate) struct TestSchema {
    admin_url: String,
    name: String,
    /// A URL whose connections use only this schema, for
    /// [`super::PostgresBackend::open`].
    pub(crate) url: String,
}

impl TestSchema {
    /// A new empty schema, or `None` after saying `SKIPPED test: …` when
    /// PostgreSQL cannot be reached and `CI` is not `true`.
    pub(crate) fn create(test: &str) -> Option<TestSchema> {
        let admin_url =
            std::env::var("CHAT_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into());
        let mut admin = match connect(&admin_url) {
            Ok(client) => client,
            Err(error) => {
                assert!(
                    !std::env::var("CI").is_ok_and(|ci| ci == "true"),
                    "{test}: no PostgreSQL at {admin_url} (CI=true needs one): {error}"
                );
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {test}: no PostgreSQL at {admin_url} ({error})"
                );
                return None;
            }
        };
        let n = CREATED.fetch_add(1, Ordering::Relaxed);
        let name = format!("chat_u_{}_{n}", std::process::id());
        admin
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
            ))
            .unwrap_or_else(|error| panic!("create schema {name}: {error}"));
        let separator = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{separator}options=-csearch_path%3D{name}");
        Some(TestSchema {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let dropped = connect(&self.admin_url).and_then(|mut admin| {
            admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
        });
        if let Err(error) = dropped {
            let _ = writeln!(
                std::io::stderr(),
                "could not drop test schema {}: {error}",
                self.name
            );
        }
    }
}

fn connect(url: &str) -> Result<postgres::Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(3));
    config.connect(postgres::NoTls)
}
