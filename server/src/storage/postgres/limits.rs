//! Cluster mode's shared lockout and registration limit
//! (`shared_limits.rs` has the arithmetic and the reasons): the rows of
//! `login_failures` and `registration_buckets`, each read `FOR UPDATE` in
//! the command's transaction so that servers counting at once take turns,
//! on PostgreSQL's clock; and their expiry.

use super::{Batch, Error};
use crate::rate_limit::{Rate, Verdict};
use crate::shared_limits::{
    account_key, address_key, BucketRow, FailureRow, SharedLogin, SharedRegistration,
    SHARED_LIMIT_ROWS_MAX,
};

/// PostgreSQL's clock in Unix milliseconds (one clock for every server).
fn now_ms(batch: &mut Batch) -> Result<i64, Error> {
    let row = batch.query_one(
        "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
        &[],
    )?;
    Ok(row.try_get(0)?)
}

/// Part of `FetchCredentials`: whether the attempt may go on. It may not
/// when the address or (counted here) the account is locked; when it may,
/// it is charged to the account as a failure until its verdict.
pub(super) fn begin_login(
    batch: &mut Batch,
    username: &str,
    shared: &SharedLogin,
) -> Result<bool, Error> {
    let now = now_ms(batch)?;
    let address = batch.query_opt(
        "SELECT locked_until_ms FROM login_failures WHERE key = $1",
        &[&address_key(&shared.address)],
    )?;
    if let Some(row) = address {
        if now < row.try_get::<_, i64>(0)? {
            return Ok(false);
        }
    }
    if !shared.account {
        return Ok(true);
    }
    let key = account_key(username);
    let mut row = locked_row(batch, &key, now)?;
    if row.is_locked(now) {
        return Ok(false);
    }
    row.record(now, shared.failures_per_account);
    save_row(batch, &key, &row)?;
    Ok(true)
}

/// `EndSharedLogin`: a success clears the account's record (as on one
/// server), an attempt never tried gets its charge back, a failure counts
/// for the address (the account was charged already).
pub(super) fn end_login(
    batch: &mut Batch,
    username: &str,
    shared: &SharedLogin,
    verdict: Verdict,
) -> Result<(), Error> {
    let account = account_key(username);
    match verdict {
        Verdict::Succeeded if shared.account => {
            batch.execute("DELETE FROM login_failures WHERE key = $1", &[&account])?;
        }
        Verdict::NotTried if shared.account => {
            let now = now_ms(batch)?;
            let mut row = locked_row(batch, &account, now)?;
            row.refund();
            save_row(batch, &account, &row)?;
        }
        Verdict::Failed => {
            let now = now_ms(batch)?;
            let key = address_key(&shared.address);
            let mut row = locked_row(batch, &key, now)?;
            row.record(now, shared.failures_per_ip);
            save_row(batch, &key, &row)?;
        }
        Verdict::Succeeded | Verdict::NotTried => {}
    }
    Ok(())
}

/// The row of `key`, made if missing, locked until the commit.
fn locked_row(batch: &mut Batch, key: &str, now: i64) -> Result<FailureRow, Error> {
    let fresh = FailureRow::new(now);
    batch.execute(
        "INSERT INTO login_failures
             (key, window_start_ms, count, lockouts, locked_until_ms, idle_after_ms)
         VALUES ($1, $2, 0, 0, 0, $3)
         ON CONFLICT (key) DO NOTHING",
        &[&key, &now, &fresh.idle_after_ms()],
    )?;
    let row = batch.query_one(
        "SELECT window_start_ms, count, lockouts, locked_until_ms
         FROM login_failures WHERE key = $1 FOR UPDATE",
        &[&key],
    )?;
    Ok(FailureRow {
        window_start_ms: row.try_get(0)?,
        count: row.try_get(1)?,
        lockouts: row.try_get(2)?,
        locked_until_ms: row.try_get(3)?,
    })
}

fn save_row(batch: &mut Batch, key: &str, row: &FailureRow) -> Result<(), Error> {
    batch.execute(
        "UPDATE login_failures
         SET window_start_ms = $2, count = $3, lockouts = $4, locked_until_ms = $5,
             idle_after_ms = $6
         WHERE key = $1",
        &[
            &key,
            &row.window_start_ms,
            &row.count,
            &row.lockouts,
            &row.locked_until_ms,
            &row.idle_after_ms(),
        ],
    )?;
    Ok(())
}

/// Part of `CreateUser`: takes one of the address's registrations; whether
/// there was one.
pub(super) fn take_registration(
    batch: &mut Batch,
    shared: &SharedRegistration,
) -> Result<bool, Error> {
    let now = now_ms(batch)?;
    let full = BucketRow::full(shared.rate, now);
    batch.execute(
        "INSERT INTO registration_buckets (address, tokens, updated_ms, full_at_ms)
         VALUES ($1, $2, $3, $3)
         ON CONFLICT (address) DO NOTHING",
        &[&shared.address, &full.tokens, &now],
    )?;
    let row = batch.query_one(
        "SELECT tokens, updated_ms FROM registration_buckets WHERE address = $1 FOR UPDATE",
        &[&shared.address],
    )?;
    let mut bucket = BucketRow {
        tokens: row.try_get(0)?,
        updated_ms: row.try_get(1)?,
    };
    let taken = bucket.try_take(shared.rate, now);
    save_bucket(batch, &shared.address, &bucket, shared.rate)?;
    Ok(taken)
}

fn save_bucket(
    batch: &mut Batch,
    address: &str,
    bucket: &BucketRow,
    rate: Rate,
) -> Result<(), Error> {
    batch.execute(
        "UPDATE registration_buckets SET tokens = $2, updated_ms = $3, full_at_ms = $4
         WHERE address = $1",
        &[
            &address,
            &bucket.tokens,
            &bucket.updated_ms,
            &bucket.full_at_ms(rate),
        ],
    )?;
    Ok(())
}

/// The shared tables: each with its key column and the column saying when
/// a row stops limiting anyone.
const SHARED_TABLES: [(&str, &str, &str); 2] = [
    ("login_failures", "key", "idle_after_ms"),
    ("registration_buckets", "address", "full_at_ms"),
];

/// Deletes the rows that limit no one any more, then, past
/// [`SHARED_LIMIT_ROWS_MAX`] rows, those that would expire soonest.
pub(super) fn prune(batch: &mut Batch) -> Result<(), Error> {
    let now = now_ms(batch)?;
    for (table, key, expiry) in SHARED_TABLES {
        batch.execute(&format!("DELETE FROM {table} WHERE {expiry} < $1"), &[&now])?;
        let over_bound = format!(
            "DELETE FROM {table} WHERE {key} IN (
                 SELECT {key} FROM {table} ORDER BY {expiry}
                 LIMIT GREATEST((SELECT COUNT(*) FROM {table}) - $1, 0))"
        );
        batch.execute(&over_bound, &[&SHARED_LIMIT_ROWS_MAX])?;
    }
    Ok(())
}
