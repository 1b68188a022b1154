//! The writer thread: batches the queued writes into one transaction and one
//! commit, answers each after it, and runs a failed batch's writes again alone
//! (see the store's notes).

use anyhow::Result;
use redb::{Database, Durability};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

use super::{Target, Txn};

/// A queued write: run in its batch's transaction (again, when the batch is retried),
/// and answered once a run of it committed.
pub(super) trait WriteOp: Send {
    fn run(&mut self, txn: &Txn) -> Result<()>;
    /// Whether its batch must commit to disk whatever the durability mode.
    fn durable(&self) -> bool;
    fn answer(self: Box<Self>);
}

pub(super) struct Pending<T, F> {
    pub(super) write: F,
    pub(super) durable: bool,
    pub(super) value: Option<T>,
    pub(super) answer: oneshot::Sender<T>,
}

impl<T: Send, F: FnMut(&Txn) -> Result<T> + Send> WriteOp for Pending<T, F> {
    fn run(&mut self, txn: &Txn) -> Result<()> {
        self.value = Some((self.write)(txn)?);
        Ok(())
    }

    fn durable(&self) -> bool {
        self.durable
    }

    fn answer(self: Box<Self>) {
        if let Some(value) = self.value {
            let _ = self.answer.send(value);
        }
    }
}

pub(super) type Op = Box<dyn WriteOp>;

/// How many queued writes one transaction may absorb. Under load a commit costs
/// little more for a bigger batch (most of it is the fsync and the pages it writes),
/// so throughput grows with the batch; the cap bounds one batch's latency.
pub(super) const MAX_BATCH: usize = 4096;

/// Commits one batch of writes in one transaction, for the writer thread.
pub(super) trait Writer: Send + 'static {
    /// Runs every write of `batch` in one transaction and commits it, to disk when
    /// `durable` (else in memory, until the next [`Writer::flush`]); an `Err` means
    /// nothing of the batch was written.
    fn commit(&mut self, batch: &mut [Op], durable: bool) -> Result<()>;

    /// Makes every commit so far durable.
    fn flush(&mut self) -> Result<()>;

    /// Whether `error` lost a conflict with another writer: the same writes may
    /// succeed when run again.
    fn is_conflict(&self, _error: &anyhow::Error) -> bool {
        false
    }
}

/// When the writer answers a write (SPEC §13's durability).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commits {
    /// `strict`: once its commit is on disk
    Durable,
    /// `batched`: once it is committed; on disk (with everything committed before
    /// it) within this window
    DurableWithin(Duration),
}

/// How far the writer got, for those who wait until what they saw is on disk.
#[derive(Default)]
pub(super) struct Progress {
    /// batches committed so far
    committed: AtomicU64,
    /// of them, how many are on disk
    durable: tokio::sync::watch::Sender<u64>,
}

impl Progress {
    /// Waits until every batch committed before the call is on disk (at once with
    /// `strict` durability; within the window with `batched`). Returns at once if
    /// the writer stopped.
    pub(super) async fn durable(&self) {
        let committed = self.committed.load(Ordering::Acquire);
        let mut durable = self.durable.subscribe();
        let _ = durable.wait_for(|durable| *durable >= committed).await;
    }

    fn committed(&self, durable: bool) {
        let committed = self.committed.fetch_add(1, Ordering::AcqRel) + 1;
        if durable {
            self.durable.send_replace(committed);
        }
    }

    fn flushed(&self) {
        self.durable
            .send_replace(self.committed.load(Ordering::Acquire));
    }
}

pub(super) fn write_loop(
    mut writer: impl Writer,
    mut queue: mpsc::Receiver<Op>,
    commits: Commits,
    progress: Arc<Progress>,
) {
    let mut flushes = Flushes::new(commits);
    loop {
        let first = match flushes.next_flush() {
            None => queue.blocking_recv(),
            Some((due, timer)) => {
                let next = async { tokio::time::timeout_at(due.into(), queue.recv()).await };
                match timer.block_on(next) {
                    Ok(first) => first,
                    Err(_due) => {
                        flushes.flush(&mut writer, &progress);
                        continue;
                    }
                }
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let durable = flushes.durable(started) || batch.iter().any(|op| op.durable());
        let writes = batch.len();
        let mut committed = writer.commit(&mut batch, durable);
        // A conflict with another host's batch (a deadlock) is usually gone on the
        // next try: the batch is run again whole before it is split.
        for _ in 0..BATCH_CONFLICT_RETRIES {
            match &committed {
                Err(error) if writer.is_conflict(error) => {
                    back_off();
                    committed = writer.commit(&mut batch, durable);
                }
                _ => break,
            }
        }
        match committed {
            Ok(()) => {
                flushes.committed(started, durable, &progress);
                if let Some(observe) = COMMIT_OBSERVER.get() {
                    observe(writes, started.elapsed());
                }
                batch.into_iter().for_each(|op| op.answer());
            }
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    writes,
                    "write batch rolled back; its writes run again one by one"
                );
                for op in batch {
                    if commit_alone(&mut writer, op, durable) {
                        flushes.committed(started, durable, &progress);
                    }
                }
            }
        }
    }
    // The queue closed (the process is stopping): what was answered goes to disk.
    if flushes.next_flush().is_some() {
        flushes.flush(&mut writer, &progress);
    }
}

/// The `batched` durability's bookkeeping: when the oldest commit not yet on disk
/// must be flushed (with `strict`, every commit is durable and nothing is due).
struct Flushes {
    window: Option<(Duration, tokio::runtime::Runtime)>,
    due: Option<Instant>,
}

impl Flushes {
    fn new(commits: Commits) -> Flushes {
        let window = match commits {
            Commits::Durable => None,
            Commits::DurableWithin(window) => {
                // The writer thread waits for writes or for the flush, whichever
                // comes first, on a timer of its own.
                let timer = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("a timer for the store's flushes");
                Some((window, timer))
            }
        };
        Flushes { window, due: None }
    }

    /// When the next flush is due, with the timer to wait for it on.
    fn next_flush(&self) -> Option<(Instant, &tokio::runtime::Runtime)> {
        let (_, timer) = self.window.as_ref()?;
        Some((self.due?, timer))
    }

    /// Whether a batch started `now` commits to disk: always with `strict`; with
    /// `batched`, when it is the flush that is due.
    fn durable(&self, now: Instant) -> bool {
        self.window.is_none() || self.due.is_some_and(|due| now >= due)
    }

    fn committed(&mut self, started: Instant, durable: bool, progress: &Progress) {
        progress.committed(durable);
        if durable {
            self.due = None;
        } else if let Some((window, _)) = &self.window {
            self.due.get_or_insert(started + *window);
        }
    }

    /// Makes every commit so far durable; a flush that failed is tried again a
    /// window later (the waiters wait for it).
    fn flush(&mut self, writer: &mut impl Writer, progress: &Progress) {
        match writer.flush() {
            Ok(()) => {
                progress.flushed();
                self.due = None;
            }
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "making the last commits durable failed; trying again"
                );
                let window = self
                    .window
                    .as_ref()
                    .map_or(Duration::ZERO, |(window, _)| *window);
                self.due = Some(Instant::now() + window);
            }
        }
    }
}

/// Waits a moment before a write that lost a conflict runs again: hosts whose
/// batches collided do not collide again at once.
fn back_off() {
    let pause = rand::Rng::random_range(&mut rand::rng(), 1..20);
    std::thread::sleep(std::time::Duration::from_millis(pause));
}

/// How often a whole batch that lost a conflict is run again before it is split.
const BATCH_CONFLICT_RETRIES: usize = 2;

/// How often a write that keeps losing conflicts to other hosts is run again.
const CONFLICT_RETRIES: usize = 5;

/// Runs `op` in a transaction of its own, again while it loses conflicts; answers
/// it once committed, or drops it (its caller hears that nothing was written).
/// Whether it committed.
fn commit_alone(writer: &mut impl Writer, op: Op, durable: bool) -> bool {
    let mut alone = [op];
    for _ in 0..=CONFLICT_RETRIES {
        match writer.commit(&mut alone, durable) {
            Ok(()) => {
                let [op] = alone;
                op.answer();
                return true;
            }
            Err(error) if writer.is_conflict(&error) => {
                back_off();
                tracing::info!(
                    error = format!("{error:#}"),
                    "a write lost a conflict with another host's; running it again"
                );
            }
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "write aborted");
                return false;
            }
        }
    }
    tracing::error!("a write kept losing conflicts with other hosts' and was given up");
    false
}

pub(super) struct RedbWriter(pub(super) Arc<Database>);

impl RedbWriter {
    fn begin(&self, durable: bool) -> redb::WriteTransaction {
        let mut txn = match self.0.begin_write() {
            Ok(txn) => txn,
            Err(error) => fatal(&error),
        };
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        if let Err(error) = txn.set_durability(durability) {
            fatal(&error);
        }
        txn
    }
}

impl Writer for RedbWriter {
    fn commit(&mut self, batch: &mut [Op], durable: bool) -> Result<()> {
        let txn = self.begin(durable);
        for op in batch {
            if let Err(error) = op.run(&Txn(Target::Redb(&txn))) {
                drop(txn.abort());
                return Err(error);
            }
        }
        if let Err(error) = txn.commit() {
            fatal(&error);
        }
        Ok(())
    }

    /// An empty commit to disk persists the non-durable ones before it.
    fn flush(&mut self) -> Result<()> {
        if let Err(error) = self.begin(true).commit() {
            fatal(&error);
        }
        Ok(())
    }
}

/// Told of every commit: how many writes it held and how long it took (the metrics
/// listen; the store imports nothing of the host).
static COMMIT_OBSERVER: std::sync::OnceLock<fn(usize, std::time::Duration)> =
    std::sync::OnceLock::new();

/// Sets the process's commit observer (the first call wins).
pub fn observe_commits(observer: fn(usize, std::time::Duration)) {
    let _ = COMMIT_OBSERVER.set(observer);
}

/// redb refuses writes after a failed commit: stop, and let the restart recover from
/// what is durable (every acknowledged write).
fn fatal(error: &dyn std::fmt::Display) -> ! {
    tracing::error!(%error, "the store failed to commit; exiting so a restart can recover");
    std::process::exit(70)
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;

    async fn written(store: &Store) {
        store.write(|_| Ok(())).await.unwrap();
    }

    #[tokio::test]
    async fn strict_writes_are_on_disk_when_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("db.redb"),
            Commits::Durable,
            crate::store::TEST_CACHE,
        )
        .unwrap();
        written(&store).await;
        tokio::time::timeout(Duration::from_secs(5), store.durable())
            .await
            .expect("nothing left to flush");
    }

    /// `batched`: a write is answered before it is on disk; nothing flushes it
    /// before its window ends (60 s here) unless a flush is asked for.
    #[tokio::test]
    async fn batched_writes_are_answered_first_and_flushed_within_the_window_or_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let long = Commits::DurableWithin(Duration::from_secs(60));
        let store = Store::open(
            &dir.path().join("long.redb"),
            long,
            crate::store::TEST_CACHE,
        )
        .unwrap();
        written(&store).await;
        let waiting = tokio::time::timeout(Duration::from_millis(300), store.durable()).await;
        assert!(waiting.is_err(), "flushed long before its window");
        store.flush().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), store.durable())
            .await
            .expect("a flush makes every answered write durable");

        let short = Commits::DurableWithin(Duration::from_millis(20));
        let store = Store::open(
            &dir.path().join("short.redb"),
            short,
            crate::store::TEST_CACHE,
        )
        .unwrap();
        for _ in 0..3 {
            written(&store).await;
            tokio::time::timeout(Duration::from_secs(10), store.durable())
                .await
                .expect("flushed when the window ended, with no write after it");
        }
    }
}
