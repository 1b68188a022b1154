//! Wall-clock time as the service records it: UTC, millisecond precision.
//!
//! Tests of schedules measured in minutes and days (webhook retries, file TTLs,
//! expiry) drive this clock forward instead of sleeping: [`advance`] is reachable
//! only when the operator enables `[testing] clock_control`. Timers that wait on
//! the clock use [`sleep_until`], which wakes early when the clock jumps.

use chrono::{DateTime, SubsecRound, Utc};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::watch;

/// Milliseconds added to the system clock.
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);
/// Bumped on every jump, so sleepers re-check their deadline.
static JUMPS: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::channel(0).0);

pub fn now() -> DateTime<Utc> {
    let offset = chrono::Duration::milliseconds(OFFSET_MS.load(Ordering::Relaxed));
    (Utc::now() + offset).trunc_subsecs(3)
}

/// A monotonic instant on the same clock: the system's, plus every jump. Cool-downs
/// measured with it (circuit breakers) pass when tests drive the clock.
pub fn instant() -> std::time::Instant {
    let offset = OFFSET_MS.load(Ordering::Relaxed).max(0) as u64;
    std::time::Instant::now() + std::time::Duration::from_millis(offset)
}

/// Moves the clock forward by `by` and wakes every [`sleep_until`].
pub fn advance(by: chrono::Duration) {
    OFFSET_MS.fetch_add(by.num_milliseconds().max(0), Ordering::Relaxed);
    JUMPS.send_modify(|jumps| *jumps += 1);
}

/// Where a driven clock keeps its offset, so that a restart does not turn it back
/// (records written on the advanced clock would otherwise lie in the future).
pub fn offset_file(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("clock-offset-ms")
}

/// Moves the clock forward by the offset saved in `path`, if any.
pub fn restore(path: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let ms: i64 = text.trim().parse()?;
            advance(chrono::Duration::milliseconds(ms));
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Saves the clock's offset in `path`.
pub fn save(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::write(path, OFFSET_MS.load(Ordering::Relaxed).to_string())
}

/// Sleeps until the clock reads `deadline` or later (at most `cap` of real time,
/// so callers can re-check their own state).
pub async fn sleep_until(deadline: DateTime<Utc>, cap: std::time::Duration) {
    let mut jumps = JUMPS.subscribe();
    let remaining = (deadline - now()).to_std().unwrap_or_default().min(cap);
    tokio::select! {
        _ = tokio::time::sleep(remaining) => {}
        _ = jumps.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_jump_wakes_sleepers_and_moves_now() {
        // A tiny jump: the clock is process-wide and other tests read it.
        let before = OFFSET_MS.load(Ordering::Relaxed);
        let deadline = now() + chrono::Duration::hours(1);
        let sleeper = tokio::spawn(sleep_until(deadline, std::time::Duration::from_secs(3600)));
        tokio::task::yield_now().await;
        advance(chrono::Duration::milliseconds(1));
        tokio::time::timeout(std::time::Duration::from_secs(5), sleeper)
            .await
            .expect("the jump woke the sleeper")
            .unwrap();
        assert!(OFFSET_MS.load(Ordering::Relaxed) > before);
    }
}
