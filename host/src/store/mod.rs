//! Durable state: one redb file (the embedded default) or a PostgreSQL database.
//!
//! Reads run anywhere ([`Store::read`]). Writes go through one writer thread that
//! batches whatever is waiting into a single transaction and one commit (group
//! commit), then answers each caller only after the commit returned: an acknowledged
//! write is durable. A write closure must not block; its domain rejections are values
//! in its `Ok`, while an `Err` is a storage failure: its batch is rolled back and
//! its writes are run again one transaction each, so that only the failing one
//! fails. (A write may therefore run more than once before it commits: it is a
//! function of what it reads, never of how often it ran.) On PostgreSQL, where
//! other hosts write too, a write that lost a conflict to another host's (a
//! deadlock, a unique key taken meanwhile) is run again in the same way.
//!
//! Domain code never sees the engine: it gets a [`Snapshot`] or a [`Txn`] and hands
//! it to the storage functions of the module that owns the data (each module's
//! `db`, the only place that declares its tables and queries). A write that spans
//! modules (an execution, its hold and its webhook event) passes the one [`Txn`]
//! through each, so it commits whole or not at all. Each `db` answers for both
//! engines: redb tables through [`Reader::open_table`], and SQL through
//! [`Reader::postgres`] (the schema is in `store/migrations`).

use anyhow::{Context, Result, anyhow};
use redb::{Database, ReadTransaction, ReadableDatabase, TableDefinition, WriteTransaction};
use redb::{ReadOnlyTable, ReadableTable, Table};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

mod deferred;
pub mod hosts;
mod migrate;
mod pool;
pub mod postgres;
mod writer;
use hosts::Lease;
pub use hosts::Membership;
pub use migrate::migrate;
pub use postgres::Session;
pub use writer::{Commits, observe_commits};
use writer::{MAX_BATCH, Op, Pending, Progress, RedbWriter, Writer, write_loop};

/// The page cache of the stores unit tests open.
#[cfg(test)]
pub const TEST_CACHE: usize = 8 << 20;

/// JSON-encoded records keyed by id.
pub type JsonTable = TableDefinition<'static, &'static str, &'static [u8]>;

/// Every table of the store: each is declared by the module that owns it, with
/// [`table!`], and created when the store opens.
#[linkme::distributed_slice]
pub static TABLES: [JsonTable];

/// Declares a table the calling module owns: `table!(EXECUTIONS = "executions");`.
/// Only the declaring module opens it; others go through its functions.
macro_rules! table {
    ($(#[$doc:meta])* $vis:vis $name:ident = $label:literal) => {
        $(#[$doc])*
        $vis const $name: $crate::store::JsonTable = redb::TableDefinition::new($label);
        const _: () = {
            #[linkme::distributed_slice($crate::store::TABLES)]
            static TABLE: $crate::store::JsonTable = $name;
        };
    };
}
pub(crate) use table;

table! {
    /// counters and singletons
    pub META = "meta"
}

/// A consistent snapshot of the store, to read from.
pub struct Snapshot(Source);

enum Source {
    Redb(ReadTransaction),
    Postgres(Box<postgres::Session>),
}

/// The write transaction of the current batch: everything written through it commits
/// together, or nothing does.
pub struct Txn<'a>(Target<'a>);

enum Target<'a> {
    Redb(&'a WriteTransaction),
    Postgres(&'a postgres::Session),
}

/// Reads from a [`Snapshot`] or inside a [`Txn`], so that a module's read functions
/// are written once for both. Each asks [`Reader::postgres`] first, and otherwise
/// opens redb tables.
pub trait Reader {
    type Table<'t>: ReadableTable<&'static str, &'static [u8]>
    where
        Self: 't;
    /// A redb table (an error on PostgreSQL, where there are no such tables).
    fn open_table(&self, table: JsonTable) -> Result<Self::Table<'_>>;
    /// The PostgreSQL session to query, when the store is PostgreSQL.
    fn postgres(&self) -> Option<&Session>;
}

fn not_redb() -> anyhow::Error {
    anyhow!("a redb table was opened on the PostgreSQL store")
}

impl Reader for Snapshot {
    type Table<'t> = ReadOnlyTable<&'static str, &'static [u8]>;
    fn open_table(&self, table: JsonTable) -> Result<Self::Table<'_>> {
        match &self.0 {
            Source::Redb(txn) => Ok(txn.open_table(table)?),
            Source::Postgres(_) => Err(not_redb()),
        }
    }
    fn postgres(&self) -> Option<&Session> {
        match &self.0 {
            Source::Redb(_) => None,
            Source::Postgres(session) => Some(session),
        }
    }
}

impl Reader for Txn<'_> {
    type Table<'t>
        = Table<'t, &'static str, &'static [u8]>
    where
        Self: 't;
    fn open_table(&self, table: JsonTable) -> Result<Self::Table<'_>> {
        match self.0 {
            Target::Redb(txn) => Ok(txn.open_table(table)?),
            Target::Postgres(_) => Err(not_redb()),
        }
    }
    fn postgres(&self) -> Option<&Session> {
        match self.0 {
            Target::Redb(_) => None,
            Target::Postgres(session) => Some(session),
        }
    }
}

#[derive(Clone)]
pub struct Store {
    engine: Engine,
    writes: mpsc::Sender<Op>,
    progress: Arc<Progress>,
    /// this host's lease, when it shares the store with others
    lease: Option<Arc<Lease>>,
}

#[derive(Clone)]
enum Engine {
    Redb(Arc<Database>),
    Postgres(Arc<pool::Pool>),
}

impl Store {
    /// Opens (or creates) the embedded store: one redb file, whose page cache
    /// holds at most `cache_bytes`.
    pub fn open(path: &Path, commits: Commits, cache_bytes: usize) -> Result<Store> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let db = Arc::new(db);
        let txn = db.begin_write()?;
        for table in TABLES {
            txn.open_table(*table)?;
        }
        txn.commit()?;
        Store::start(Engine::Redb(db.clone()), RedbWriter(db), commits)
    }

    /// Connects to PostgreSQL at `url`, bringing its schema up to date first, and
    /// joins the hosts that share it as `host` (see [`hosts`]). Reads use at most
    /// `connections` connections (the writer, the lease's heartbeat and each
    /// listener have one more each).
    pub fn connect(
        url: &str,
        host: &Membership,
        commits: Commits,
        connections: usize,
    ) -> Result<Store> {
        migrate(url)?;
        let pool = Arc::new(pool::Pool::new(url, connections));
        pool.check()?;
        let asked = std::time::Instant::now();
        let writer = postgres::Writer::connect(url, host)?;
        writer.register(host)?;
        let mut store = Store::start(Engine::Postgres(pool), writer, commits)?;
        store.lease = Some(Lease::start(host, asked, url)?);
        Ok(store)
    }

    /// Runs `f` outside any transaction, each statement committing by itself, for
    /// state that needs no batch (shared counters); `None` on redb.
    pub fn autocommit<T>(&self, f: impl FnOnce(&Session) -> Result<T>) -> Option<Result<T>> {
        match &self.engine {
            Engine::Redb(_) => None,
            Engine::Postgres(pool) => Some(blocking(|| pool.autocommit(f))),
        }
    }

    /// [`Store::autocommit`] on a blocking thread, for work that may wait on other
    /// hosts' locks.
    pub async fn autocommit_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Session) -> Result<T> + Send + 'static,
    ) -> Option<Result<T>> {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || store.autocommit(f)).await {
            Ok(done) => done,
            Err(error) => Some(Err(error.into())),
        }
    }

    fn start(engine: Engine, writer: impl Writer, commits: Commits) -> Result<Store> {
        let (writes, queue) = mpsc::channel(MAX_BATCH * 4);
        let progress = Arc::new(Progress::default());
        let writing = progress.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(writer, queue, commits, writing))?;
        Ok(Store {
            engine,
            writes,
            progress,
            lease: None,
        })
    }

    /// Waits until every write answered so far is on disk: at once with `strict`
    /// durability, within the window with `batched`. For what must not leave the
    /// process before it is durable (a webhook event).
    pub async fn durable(&self) {
        self.progress.durable().await
    }

    /// Whether the store works: a read transaction opens and the writer thread that
    /// commits every write still runs.
    pub fn check(&self) -> Result<()> {
        if self.writes.is_closed() {
            anyhow::bail!("the store's writer has stopped");
        }
        match &self.engine {
            Engine::Redb(db) => drop(db.begin_read()?),
            Engine::Postgres(pool) => blocking(|| pool.check())?,
        }
        Ok(())
    }

    /// Runs `f` in a read transaction (a consistent snapshot).
    pub fn read<T>(&self, f: impl FnOnce(&Snapshot) -> Result<T>) -> Result<T> {
        match &self.engine {
            Engine::Redb(db) => f(&Snapshot(Source::Redb(db.begin_read()?))),
            Engine::Postgres(pool) => blocking(|| pool.snapshot(|session| on(session, f))),
        }
    }

    /// Runs `f` where each statement reads the latest committed state on its own:
    /// on PostgreSQL outside a transaction, one round trip a statement where a
    /// snapshot takes two more (`BEGIN`, `COMMIT`). For a read of one row, or of
    /// rows that need not agree with each other; on redb it is [`Store::read`].
    pub fn read_latest<T>(&self, f: impl Fn(&Snapshot) -> Result<T>) -> Result<T> {
        match &self.engine {
            Engine::Redb(_) => self.read(f),
            Engine::Postgres(pool) => blocking(|| pool.latest(|session| on(session, &f))),
        }
    }

    /// Runs `f` in the next batch's write transaction and answers after the commit
    /// (`f` may run more than once: see the module's notes).
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&Txn) -> Result<T> + Send + 'static,
    {
        self.queue(f, false).await
    }

    /// Commits everything written so far to disk now, whatever the durability
    /// mode (at start-up, and before the process ends).
    pub async fn flush(&self) -> Result<()> {
        self.queue(|_| Ok(()), true).await
    }

    async fn queue<T, F>(&self, f: F, durable: bool) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&Txn) -> Result<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let op: Op = Box::new(Pending {
            write: f,
            durable,
            value: None,
            answer,
        });
        self.writes
            .send(op)
            .await
            .map_err(|_| anyhow!("the store writer has stopped"))?;
        answered
            .await
            .map_err(|_| anyhow!("the write was not committed"))
    }
}

/// Runs `f` on a PostgreSQL session as a [`Snapshot`], and hands the session back.
fn on<T>(
    session: Box<Session>,
    f: impl FnOnce(&Snapshot) -> Result<T>,
) -> (Box<Session>, Result<T>) {
    let snapshot = Snapshot(Source::Postgres(session));
    let value = f(&snapshot);
    let Snapshot(Source::Postgres(session)) = snapshot else {
        unreachable!("a PostgreSQL snapshot")
    };
    (session, value)
}

/// Runs blocking database work from wherever a read is made: on a runtime's worker
/// thread it is moved out of the way of the other tasks first.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Serializes a record for a [`JsonTable`].
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    Ok(serde_json::from_slice(bytes)?)
}

/// Reads one record through any readable table.
pub fn get<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>> {
    match table.get(key)? {
        Some(guard) => Ok(Some(decode(guard.value())?)),
        None => Ok(None),
    }
}

/// The server's secret key `name` (32 random bytes made on first use and kept in
/// the store, so signed URLs and tokens survive restarts).
pub async fn signing_key(store: &Store, name: &'static str) -> Result<Vec<u8>> {
    store
        .write(move |txn| {
            if let Some(pg) = txn.postgres() {
                return postgres::signing_key(pg, name);
            }
            let mut meta = txn.open_table(META)?;
            if let Some(key) = get::<String>(&meta, name)? {
                return Ok(hex::decode(key)?);
            }
            let mut key = vec![0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
            meta.insert(name, encode(&hex::encode(&key))?.as_slice())?;
            Ok(key)
        })
        .await
}

/// A page of a list being filled: up to `limit` values, then whether more follow.
pub struct Page<T> {
    values: Vec<T>,
    limit: usize,
    more: bool,
}

impl<T> Page<T> {
    pub fn new(limit: usize) -> Page<T> {
        Page {
            values: Vec::new(),
            limit,
            more: false,
        }
    }

    /// Adds `value`; when the page is full, notes instead that more follow and
    /// answers `Break`: the caller stops reading.
    pub fn offer(&mut self, value: T) -> ControlFlow<()> {
        if self.values.len() == self.limit {
            self.more = true;
            return ControlFlow::Break(());
        }
        self.values.push(value);
        ControlFlow::Continue(())
    }

    /// The page's values and whether more follow.
    pub fn finish(self) -> (Vec<T>, bool) {
        (self.values, self.more)
    }
}

/// One page of a list: walks `index` (keys `{prefix}…/{id}`, empty values) from
/// `start`, loads each id from `records`, keeps what `keep` accepts, and stops at
/// `limit`. Returns the page and whether more follow.
pub fn page<T: DeserializeOwned>(
    index: &impl ReadableTable<&'static str, &'static [u8]>,
    records: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
    start: &str,
    limit: usize,
    mut keep: impl FnMut(&T) -> bool,
) -> Result<(Vec<T>, bool)> {
    let mut page = Page::new(limit);
    for row in index.range(start..)? {
        let (key, _) = row?;
        let key = key.value();
        if !key.starts_with(prefix) {
            break;
        }
        let id = key.rsplit('/').next().unwrap_or_default();
        let Some(record) = get::<T>(records, id)? else {
            continue;
        };
        if keep(&record) && page.offer(record).is_break() {
            break;
        }
    }
    Ok(page.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_takes_up_to_its_limit_and_knows_whether_more_follow() {
        let mut page = Page::new(2);
        assert!(page.offer(1).is_continue());
        assert!(page.offer(2).is_continue());
        assert!(
            page.offer(3).is_break(),
            "a third value is one more, not kept"
        );
        assert_eq!(page.finish(), (vec![1, 2], true));
        let mut short = Page::new(2);
        assert!(short.offer(1).is_continue());
        assert_eq!(short.finish(), (vec![1], false));
    }

    /// Every owner's tables reach the store, once each.
    #[test]
    fn every_declared_table_is_collected_once() {
        use redb::TableHandle;
        let names: Vec<&str> = TABLES.iter().map(|table| table.name()).collect();
        let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for owned in [
            "executions",
            "ledger",
            "webhook_due",
            "files",
            "api_keys",
            "meta",
        ] {
            assert!(unique.contains(owned), "{owned} missing from {names:?}");
        }
    }

    #[tokio::test]
    async fn concurrent_writes_are_batched_and_all_acknowledged_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("db.redb"),
            crate::store::Commits::Durable,
            crate::store::TEST_CACHE,
        )
        .unwrap();
        let writes = (0..200).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write(move |txn| {
                        let mut table = txn.open_table(META)?;
                        table.insert(format!("k{i}").as_str(), encode(&i)?.as_slice())?;
                        Ok(i)
                    })
                    .await
            })
        });
        for (i, write) in writes.enumerate() {
            assert_eq!(write.await.unwrap().unwrap(), i);
        }
        let count = store
            .read(|txn| {
                let table = txn.open_table(META)?;
                Ok((0..200)
                    .filter(|i| get::<usize>(&table, &format!("k{i}")).unwrap() == Some(*i))
                    .count())
            })
            .unwrap();
        assert_eq!(count, 200);
    }

    /// A write that fails no longer fails the writes batched with it: they run
    /// again, one transaction each.
    #[tokio::test]
    async fn a_failing_write_fails_alone_and_the_writes_batched_with_it_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("db.redb"),
            crate::store::Commits::Durable,
            crate::store::TEST_CACHE,
        )
        .unwrap();
        let writes: Vec<_> = (0..64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .write(move |txn| {
                            let mut table = txn.open_table(META)?;
                            table.insert(format!("k{i}").as_str(), encode(&i)?.as_slice())?;
                            anyhow::ensure!(i != 32, "broken");
                            Ok(i)
                        })
                        .await
                })
            })
            .collect();
        for (i, write) in writes.into_iter().enumerate() {
            let written = write.await.unwrap();
            assert_eq!(written.is_ok(), i != 32, "write {i}: {written:?}");
        }
        let kept = store
            .read(|txn| {
                let table = txn.open_table(META)?;
                Ok((0..64)
                    .filter(|i| table.get(format!("k{i}").as_str()).unwrap().is_some())
                    .count())
            })
            .unwrap();
        assert_eq!(
            kept, 63,
            "the failed write left nothing, the others everything"
        );
    }

    #[tokio::test]
    async fn a_failing_write_rolls_back_its_batch_and_the_store_keeps_working() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("db.redb"),
            crate::store::Commits::Durable,
            crate::store::TEST_CACHE,
        )
        .unwrap();
        let failed: Result<()> = store
            .write(|txn| {
                txn.open_table(META)?.insert("half", b"1".as_slice())?;
                anyhow::bail!("broken halfway")
            })
            .await;
        assert!(failed.is_err());
        store
            .write(|txn| {
                Ok(txn
                    .open_table(META)?
                    .insert("whole", b"1".as_slice())?
                    .is_none())
            })
            .await
            .unwrap();
        let half = store
            .read(|txn| Ok(txn.open_table(META)?.get("half")?.is_some()))
            .unwrap();
        assert!(!half, "an aborted write left data behind");
    }
}
