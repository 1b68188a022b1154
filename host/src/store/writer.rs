//! The writer thread: batches the queued writes into one transaction and one
//! commit, answers each after it, and runs a failed batch's writes again alone
//! (see the store's notes).

use anyhow::Result;
use redb::Database;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use super::{Target, Txn};

/// A queued write: run in its batch's transaction (again, when the batch is retried),
/// and answered once a run of it committed.
pub(super) trait WriteOp: Send {
    fn run(&mut self, txn: &Txn) -> Result<()>;
    fn answer(self: Box<Self>);
}

pub(super) struct Pending<T, F> {
    pub(super) write: F,
    pub(super) value: Option<T>,
    pub(super) answer: oneshot::Sender<T>,
}

impl<T: Send, F: FnMut(&Txn) -> Result<T> + Send> WriteOp for Pending<T, F> {
    fn run(&mut self, txn: &Txn) -> Result<()> {
        self.value = Some((self.write)(txn)?);
        Ok(())
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
    /// Runs every write of `batch` in one transaction and commits it; an `Err` means
    /// nothing of the batch was written.
    fn commit(&mut self, batch: &mut [Op]) -> Result<()>;

    /// Whether `error` lost a conflict with another writer: the same writes may
    /// succeed when run again.
    fn is_conflict(&self, _error: &anyhow::Error) -> bool {
        false
    }
}

pub(super) fn write_loop(mut writer: impl Writer, mut queue: mpsc::Receiver<Op>) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let writes = batch.len();
        let mut committed = writer.commit(&mut batch);
        // A conflict with another host's batch (a deadlock) is usually gone on the
        // next try: the batch is run again whole before it is split.
        for _ in 0..BATCH_CONFLICT_RETRIES {
            match &committed {
                Err(error) if writer.is_conflict(error) => {
                    back_off();
                    committed = writer.commit(&mut batch);
                }
                _ => break,
            }
        }
        match committed {
            Ok(()) => {
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
                    commit_alone(&mut writer, op);
                }
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
fn commit_alone(writer: &mut impl Writer, op: Op) {
    let mut alone = [op];
    for _ in 0..=CONFLICT_RETRIES {
        match writer.commit(&mut alone) {
            Ok(()) => {
                let [op] = alone;
                return op.answer();
            }
            Err(error) if writer.is_conflict(&error) => {
                back_off();
                tracing::info!(
                    error = format!("{error:#}"),
                    "a write lost a conflict with another host's; running it again"
                );
            }
            Err(error) => {
                return tracing::error!(error = format!("{error:#}"), "write aborted");
            }
        }
    }
    tracing::error!("a write kept losing conflicts with other hosts' and was given up");
}

pub(super) struct RedbWriter(pub(super) Arc<Database>);

impl Writer for RedbWriter {
    fn commit(&mut self, batch: &mut [Op]) -> Result<()> {
        let txn = match self.0.begin_write() {
            Ok(txn) => txn,
            Err(error) => fatal(&error),
        };
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
