//! The PostgreSQL engine: sessions (a connection with its prepared statements), a
//! pool of them for snapshots, the writer's own session, and the schema's
//! migrations, shipped in the binary.
//!
//! A snapshot is a `REPEATABLE READ, READ ONLY` transaction. The writer's batch is a
//! `READ COMMITTED` transaction in which every read a write decides on takes its rows
//! `FOR UPDATE` ([`Session::for_update`]): the rows it read cannot change before it
//! commits, whoever else writes to the database.

use ::postgres::types::ToSql;
use ::postgres::{Client, NoTls, Row, Statement};
use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::deferred::Deferred;
use super::{Commit, Page, Target, Txn, WriteOp};

/// Parameters of a query.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// One connection and the statements prepared on it.
pub struct Session {
    client: RefCell<Client>,
    statements: RefCell<HashMap<String, Statement>>,
    writing: bool,
    /// The writer's batch's writes held until its commit.
    deferred: RefCell<Deferred>,
}

impl Session {
    fn connect(url: &str, writing: bool) -> Result<Session> {
        let client = Client::connect(url, NoTls).context("connecting to PostgreSQL")?;
        Ok(Session {
            client: RefCell::new(client),
            statements: RefCell::new(HashMap::new()),
            writing,
            deferred: RefCell::new(Deferred::default()),
        })
    }

    fn is_closed(&self) -> bool {
        self.client.borrow().is_closed()
    }

    fn statement(&self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self
            .client
            .borrow_mut()
            .prepare(sql)
            .with_context(|| format!("preparing {sql}"))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    /// Every row of `sql`.
    pub fn query(&self, sql: &str, params: Params) -> Result<Vec<Row>> {
        let statement = self.statement(sql)?;
        Ok(self.client.borrow_mut().query(&statement, params)?)
    }

    /// The row of `sql`, if any (more than one is an error).
    pub fn query_opt(&self, sql: &str, params: Params) -> Result<Option<Row>> {
        let statement = self.statement(sql)?;
        Ok(self.client.borrow_mut().query_opt(&statement, params)?)
    }

    /// Runs `sql`; how many rows it changed.
    pub fn execute(&self, sql: &str, params: Params) -> Result<u64> {
        let statement = self.statement(sql)?;
        Ok(self.client.borrow_mut().execute(&statement, params)?)
    }

    /// `" FOR UPDATE"` inside a write, nothing in a snapshot: what a write reads, it
    /// locks until it commits.
    pub fn for_update(&self) -> &'static str {
        if self.writing { " FOR UPDATE" } else { "" }
    }

    /// Keeps the row `key` as `value` until the batch commits, written then by
    /// `write` (see [`Deferred`]); outside a write, writes it at once.
    pub fn keep<T: Send + 'static>(
        &self,
        key: String,
        value: T,
        write: fn(&Session, &T) -> Result<()>,
    ) -> Result<()> {
        if !self.writing {
            return write(self, &value);
        }
        self.deferred.borrow_mut().keep(key, value, write);
        Ok(())
    }

    /// The value this batch kept for the row `key`, if any.
    pub fn kept<T: Clone + 'static>(&self, key: &str) -> Option<T> {
        self.deferred.borrow().kept(key)
    }

    /// Appends `value` to `table` when the batch commits, in one call of `write`
    /// with the batch's other rows of `table`; outside a write, at once.
    pub fn append<T: Send + 'static>(
        &self,
        table: &'static str,
        value: T,
        write: fn(&Session, &[T]) -> Result<()>,
    ) -> Result<()> {
        if !self.writing {
            return write(self, std::slice::from_ref(&value));
        }
        self.deferred.borrow_mut().append(table, value, write);
        Ok(())
    }

    /// Writes what the batch deferred.
    fn flush(&self) -> Result<()> {
        let pending = self.deferred.borrow_mut().take();
        pending.iter().try_for_each(|write| write.write(self))
    }

    fn batch(&self, sql: &str) -> Result<()> {
        Ok(self.client.borrow_mut().batch_execute(sql)?)
    }
}

/// Idle sessions for snapshots; more are opened when all are busy.
pub struct Pool {
    url: String,
    idle: Mutex<Vec<Session>>,
}

/// How many idle sessions the pool keeps.
const MAX_IDLE: usize = 16;

impl Pool {
    pub fn new(url: &str) -> Pool {
        Pool {
            url: url.to_string(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Whether the database answers.
    pub fn check(&self) -> Result<()> {
        self.snapshot(|session| {
            let answer = session.query_opt("SELECT 1", &[]).map(drop);
            (session, answer)
        })
    }

    /// Runs `f` in a snapshot on an idle session, and gives the session back.
    pub fn snapshot<T>(
        &self,
        f: impl FnOnce(Box<Session>) -> (Box<Session>, Result<T>),
    ) -> Result<T> {
        const BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";
        let idle = self.idle.lock().expect("pool").pop().map(Box::new);
        let session = match idle {
            // An idle connection may have been closed by the server meanwhile (a
            // restart, an operator's pg_terminate_backend): then a new one is made.
            Some(session) if session.batch(BEGIN).is_ok() => session,
            _ => {
                let session = Box::new(Session::connect(&self.url, false)?);
                session.batch(BEGIN)?;
                session
            }
        };
        let (session, value) = f(session);
        if session.batch("COMMIT").is_ok() && !session.is_closed() {
            let mut idle = self.idle.lock().expect("pool");
            if idle.len() < MAX_IDLE {
                idle.push(*session);
            }
        }
        value
    }
}

impl Drop for Pool {
    /// Each connection runs its own small runtime, which must not be dropped on an
    /// async runtime's thread: the idle ones are closed on a thread of their own.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        if !idle.is_empty() {
            let _ = std::thread::Builder::new()
                .name("store-pool-close".into())
                .spawn(move || drop(idle));
        }
    }
}

/// The writer thread's session, opened again when its connection was lost.
///
/// One host writes to a database at a time: the writer's connection holds an
/// advisory lock ([`WRITER_LOCK`]) for as long as it lives, and a second host's
/// writer cannot take it, so that host refuses to start. Two hosts driving the
/// same executions would submit them twice; until hosts share the work under
/// leases, the database says no.
pub struct Writer {
    url: String,
    session: Option<Session>,
}

/// Any number: the advisory lock the writing host's connection holds.
const WRITER_LOCK: i64 = 0x6d6f_6465_6c77_7269;

/// How long a writer waits for the lock: the connection of a host that just died
/// (or that the database just closed) takes a moment to go, and its lock with it.
const WRITER_LOCK_WAIT: Duration = Duration::from_secs(5);

impl Writer {
    /// Connects the writer and takes the database's writer lock; an error when
    /// another host holds it.
    pub fn connect(url: &str) -> Result<Writer> {
        let session = Writer::open(url)?;
        Ok(Writer {
            url: url.to_string(),
            session: Some(session),
        })
    }

    fn open(url: &str) -> Result<Session> {
        let session = Session::connect(url, true)?;
        let waited = Instant::now();
        loop {
            let row = session.query_opt("SELECT pg_try_advisory_lock($1)", &[&WRITER_LOCK])?;
            if row.is_some_and(|row| row.get::<_, bool>(0)) {
                return Ok(session);
            }
            if waited.elapsed() >= WRITER_LOCK_WAIT {
                bail!(
                    "another modelroute host is writing to the database at {}: \
                     several hosts on one database are not supported yet (see the README)",
                    redacted(url)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The session, in a transaction just begun. A connection lost since the last
    /// batch (nothing of this one was sent yet) is replaced by a new one, which
    /// takes the writer lock again.
    fn begin(&mut self) -> Result<&Session> {
        if let Some(session) = &self.session
            && session.batch("BEGIN").is_ok()
        {
            return Ok(self.session.as_ref().expect("kept"));
        }
        self.session = None;
        let session = Writer::open(&self.url)?;
        session.batch("BEGIN")?;
        Ok(self.session.insert(session))
    }
}

impl super::Writer for Writer {
    fn commit(&mut self, batch: Vec<WriteOp>) -> Result<Vec<Commit>> {
        let session = self.begin()?;
        let mut commits = Vec::with_capacity(batch.len());
        let write = || {
            for op in batch {
                commits.push(op(&Txn(Target::Postgres(session)))?);
            }
            session.flush()
        };
        let written = write();
        if let Err(error) = written {
            session.deferred.borrow_mut().take();
            let _ = session.batch("ROLLBACK");
            return Err(error);
        }
        session.batch("COMMIT")?;
        Ok(commits)
    }
}

/// The server secret `name`, made once by whichever host asks first.
pub fn signing_key(pg: &Session, name: &str) -> Result<Vec<u8>> {
    let mut key = vec![0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
    pg.execute(
        "INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        &[&name, &hex::encode(&key)],
    )?;
    let row = pg
        .query_opt("SELECT value FROM meta WHERE name = $1", &[&name])?
        .ok_or_else(|| anyhow!("the secret {name} was not kept"))?;
    Ok(hex::decode(row.get::<_, String>(0))?)
}

/// The schema's migrations, in order: `(version, name, SQL)`. A released migration
/// is never edited; a change is a new one.
const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "schema", include_str!("migrations/0001_schema.sql"))];

/// Any number to lock migrations with: hosts starting together migrate one at a time.
const MIGRATION_LOCK: i64 = 0x6d6f_6465_6c72_6f75;

/// Brings the database at `url` up to the schema this binary knows; returns the
/// versions it applied. Each migration commits whole or not at all, hosts starting
/// at once wait for each other, and a database migrated by a newer version is left
/// as it is (its migrations keep the older schema working: see the README).
pub fn migrate(url: &str) -> Result<Vec<i32>> {
    let mut client = Client::connect(url, NoTls)
        .with_context(|| format!("connecting to PostgreSQL at {}", redacted(url)))?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let applied = apply(&mut client);
    client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])?;
    applied
}

fn apply(client: &mut Client) -> Result<Vec<i32>> {
    client.batch_execute(
        "SET client_min_messages = warning;
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )?;
    let done: Vec<i32> = client
        .query("SELECT version FROM schema_migrations", &[])?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if done.contains(&version) {
            continue;
        }
        let mut txn = client.transaction()?;
        txn.batch_execute(sql)
            .with_context(|| format!("applying migration {version} ({name})"))?;
        txn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )?;
        txn.commit()?;
        tracing::info!(version, name, "applied a database migration");
        applied.push(version);
    }
    if let Some(newest) = done.iter().max().filter(|&&v| v > MIGRATIONS.len() as i32) {
        tracing::warn!(
            database = newest,
            binary = MIGRATIONS.len(),
            "the database's schema is newer than this binary's; running on it (an upgrade in progress)"
        );
    }
    Ok(applied)
}

/// `url` without its password, for messages.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "(a URL that does not parse)".to_string(),
    }
}

/// Converts an amount to the database's `bigint`.
pub fn to_bigint(value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| anyhow!("{value} does not fit a bigint"))
}

/// Converts a `bigint` column back; a negative one is refused by the schema.
pub fn from_bigint(value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| anyhow!("a negative amount was stored: {value}"))
}

/// A serde enum's name (`"SUCCEEDED"`), for a `text` column.
pub fn label<T: serde::Serialize>(value: &T) -> Result<String> {
    match serde_json::to_value(value)? {
        serde_json::Value::String(label) => Ok(label),
        other => bail!("{other} is not a label"),
    }
}

/// The `record` column of each row, decoded.
pub fn records<T: serde::de::DeserializeOwned>(rows: Vec<Row>) -> Result<Vec<T>> {
    rows.into_iter().map(|row| record(&row)).collect()
}

/// A row's `record` column, decoded.
pub fn record<T: serde::de::DeserializeOwned>(row: &Row) -> Result<T> {
    let ::postgres::types::Json(value) = row.try_get("record")?;
    Ok(value)
}

/// Rows read per query when walking a long one ([`walk`]).
const CHUNK: i64 = 100;

/// Walks a query's rows in key order [`CHUNK`] at a time, so that a long result is
/// never read whole: `fetch(after, CHUNK)` reads up to `CHUNK` rows after the key
/// `after` (from the start for `None`), `key` tells a row's key, and `visit` sees
/// each row until it answers `Break`.
pub fn walk<K>(
    mut after: Option<K>,
    key: impl Fn(&Row) -> K,
    mut fetch: impl FnMut(Option<&K>, i64) -> Result<Vec<Row>>,
    mut visit: impl FnMut(&Row) -> Result<ControlFlow<()>>,
) -> Result<()> {
    loop {
        let rows = fetch(after.as_ref(), CHUNK)?;
        for row in &rows {
            if visit(row)?.is_break() {
                return Ok(());
            }
        }
        match rows.last() {
            Some(last) if rows.len() as i64 == CHUNK => after = Some(key(last)),
            _ => return Ok(()),
        }
    }
}

/// Up to `limit` of an organization's `table` records, newest first (ties by
/// id), after the row `after` = (created_at, id), that `keep` accepts; and
/// whether more follow. Walks the table's `(organization_id, created_at DESC,
/// id)` index.
pub fn page_newest_first<T: serde::de::DeserializeOwned>(
    pg: &Session,
    table: &str,
    org_id: &str,
    after: Option<(DateTime<Utc>, String)>,
    limit: usize,
    mut keep: impl FnMut(&T) -> bool,
) -> Result<(Vec<T>, bool)> {
    let first = format!(
        "SELECT record, created_at, id FROM {table} WHERE organization_id = $1 \
         ORDER BY created_at DESC, id LIMIT $2"
    );
    let next = format!(
        "SELECT record, created_at, id FROM {table} WHERE organization_id = $1 \
         AND (created_at < $2 OR (created_at = $2 AND id > $3)) \
         ORDER BY created_at DESC, id LIMIT $4"
    );
    let mut page = Page::new(limit);
    walk(
        after,
        |row| (row.get(1), row.get(2)),
        |after, chunk| match after {
            None => pg.query(&first, &[&org_id, &chunk]),
            Some((at, id)) => pg.query(&next, &[&org_id, at, id, &chunk]),
        },
        |row| {
            let value: T = record(row)?;
            Ok(if keep(&value) {
                page.offer(value)
            } else {
                ControlFlow::Continue(())
            })
        },
    )?;
    Ok(page.finish())
}

/// Reads back a serde enum from its [`label`].
pub fn parse_label<T: serde::de::DeserializeOwned>(label: &str) -> Result<T> {
    Ok(serde_json::from_value(serde_json::Value::String(
        label.to_string(),
    ))?)
}
