//! The PostgreSQL engine: sessions (a connection with its prepared statements) and
//! the writer's own session (the pool of sessions that read is [`super::pool`],
//! the schema's migrations are in [`super::migrate`]).
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

use super::deferred::Deferred;
use super::{Op, Page, Target, Txn};

/// Parameters of a query.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// One connection and the statements prepared on it.
pub struct Session {
    client: RefCell<Client>,
    statements: RefCell<HashMap<String, Statement>>,
    writing: bool,
    /// the host this session writes for (the writer's session only)
    host: Option<String>,
    /// The writer's batch's writes held until its commit.
    deferred: RefCell<Deferred>,
}

impl Session {
    pub(super) fn connect(url: &str, host: Option<&str>) -> Result<Session> {
        let client = Client::connect(url, NoTls).context("connecting to PostgreSQL")?;
        Ok(Session {
            client: RefCell::new(client),
            statements: RefCell::new(HashMap::new()),
            writing: host.is_some(),
            host: host.map(str::to_string),
            deferred: RefCell::new(Deferred::default()),
        })
    }

    pub(super) fn is_closed(&self) -> bool {
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

    /// The host writing (inside a write; `None` in a snapshot).
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
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

    /// What `read` answers for `key`, read once per write batch: the batch's later
    /// reads of `key` get the first answer, until [`Session::reread`] (see
    /// [`Deferred`]). Outside a write, `read` reads every time.
    pub fn read_once<T: Clone + Send + 'static>(
        &self,
        key: &str,
        read: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if !self.writing {
            return read();
        }
        if let Some(remembered) = self.deferred.borrow().remembered(key) {
            return Ok(remembered);
        }
        let value = read()?;
        self.deferred
            .borrow_mut()
            .remember(key.to_string(), value.clone());
        Ok(value)
    }

    /// The batch writes what [`Session::read_once`]'s `key` reads: read it again.
    pub fn reread(&self, key: &str) {
        self.deferred.borrow_mut().forget(key);
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

    pub(super) fn batch(&self, sql: &str) -> Result<()> {
        Ok(self.client.borrow_mut().batch_execute(sql)?)
    }
}

/// The writer thread's session, opened again when its connection was lost.
///
/// Several hosts may write to one database; each writes for its own entry in
/// `hosts` ([`super::hosts`]), and every batch first takes that entry `FOR SHARE`:
/// a host whose entry was removed (its lease lapsed and another host took its
/// work) writes nothing more, and exits.
pub struct Writer {
    url: String,
    host: super::Membership,
    session: Option<Session>,
}

/// How long a write waits for a row another host's batch holds before its batch
/// gives up and runs again. Far below PostgreSQL's deadlock detection (a second):
/// two hosts' batches that lock the same organizations' rows in opposite orders
/// part in this time instead.
const LOCK_TIMEOUT_MS: u32 = 200;

impl Writer {
    /// Connects the writer of `host`.
    pub fn connect(url: &str, host: &super::Membership) -> Result<Writer> {
        Ok(Writer {
            url: url.to_string(),
            host: host.clone(),
            session: Some(Writer::open(url, host)?),
        })
    }

    /// A writing session. A batch that waits on another host's rows gives up
    /// after [`LOCK_TIMEOUT_MS`]; one left open longer than the lease (a host
    /// paused mid-batch) is ended by the database, so that its locks never keep
    /// the other hosts from taking its work over.
    fn open(url: &str, host: &super::Membership) -> Result<Session> {
        let session = Session::connect(url, Some(&host.id))?;
        session.batch(&format!(
            "SET lock_timeout = '{LOCK_TIMEOUT_MS}ms'; \
             SET idle_in_transaction_session_timeout = '{}ms'",
            host.lease.as_millis()
        ))?;
        Ok(session)
    }

    /// Adds this host's entry (see [`super::hosts::register`]).
    pub fn register(&self, host: &super::Membership) -> Result<()> {
        let session = self.session.as_ref().expect("connected");
        super::hosts::register(session, &host.id, host.predecessor.as_deref(), host.lease)
    }

    /// The session, in a transaction just begun that holds the host's entry. A
    /// connection lost since the last batch (nothing of this one was sent yet) is
    /// replaced by a new one.
    fn begin(&mut self, durable: bool) -> Result<&Session> {
        let mut begin = super::hosts::begin_sql(&self.host.id);
        if !durable {
            // the commit returns before its WAL is flushed (see Writer::flush)
            begin.push_str("; SET LOCAL synchronous_commit = off");
        }
        let began = match &self.session {
            Some(session) => session.begin(&begin),
            None => Err(anyhow!("no connection")),
        };
        let alive = match began {
            Ok(alive) => alive,
            Err(_) => {
                self.session = None;
                let session = Writer::open(&self.url, &self.host)?;
                let alive = session.begin(&begin)?;
                self.session = Some(session);
                alive
            }
        };
        if !alive {
            super::hosts::fenced(&self.host.id);
        }
        Ok(self.session.as_ref().expect("connected"))
    }
}

impl Session {
    /// Runs `begin` (a `BEGIN` and a query for one row) in one round trip; whether
    /// the row was there.
    fn begin(&self, begin: &str) -> Result<bool> {
        let messages = self.client.borrow_mut().simple_query(begin)?;
        Ok(messages
            .iter()
            .any(|message| matches!(message, ::postgres::SimpleQueryMessage::Row(_))))
    }
}

impl super::Writer for Writer {
    fn commit(&mut self, batch: &mut [Op], durable: bool) -> Result<()> {
        let session = self.begin(durable)?;
        let mut write = || {
            for op in batch.iter_mut() {
                op.run(&Txn(Target::Postgres(session)))?;
            }
            session.flush()
        };
        if let Err(error) = write() {
            session.deferred.borrow_mut().take();
            let _ = session.batch("ROLLBACK");
            return Err(error);
        }
        session.batch("COMMIT")
    }

    /// A transaction that takes a transaction id commits synchronously: its commit
    /// waits for the WAL to be flushed up to it, every earlier commit's included.
    fn flush(&mut self) -> Result<()> {
        let session = match &self.session {
            Some(session) => session,
            None => anyhow::bail!("no connection"),
        };
        session.batch("BEGIN; SELECT pg_current_xact_id(); COMMIT")
    }

    fn is_conflict(&self, error: &anyhow::Error) -> bool {
        use ::postgres::error::SqlState;
        error.chain().any(|cause| {
            cause
                .downcast_ref::<::postgres::Error>()
                .and_then(::postgres::Error::code)
                .is_some_and(|code| {
                    [
                        SqlState::T_R_DEADLOCK_DETECTED,
                        SqlState::T_R_SERIALIZATION_FAILURE,
                        SqlState::UNIQUE_VIOLATION,
                        SqlState::LOCK_NOT_AVAILABLE,
                    ]
                    .contains(code)
                })
        })
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
