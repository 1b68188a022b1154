//! Many hosts on one PostgreSQL database: who this host is, and the loop that keeps
//! its lease and takes over the work of hosts that died.
//!
//! Each run of a host joins under a new id and remembers it in the data directory,
//! so that its next run (a restart) takes its executions over at once instead of
//! waiting for the old lease to lapse. Everything else is in [`crate::store::hosts`].

use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::executions::dispatch::Dispatcher;
use crate::store::{Membership, Store};

/// Where a host keeps the id of its latest run.
const HOST_ID_FILE: &str = "host-id";

/// This run's membership: a new id, and the previous run's, kept in `data`.
pub fn join(data: &Path, lease: Duration) -> Result<Membership> {
    let path = data.join(HOST_ID_FILE);
    let predecessor = match std::fs::read_to_string(&path) {
        Ok(id) => Some(id.trim().to_string()).filter(|id| !id.is_empty()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let id = uuid::Uuid::new_v4().to_string();
    crate::durable::write(&path, id.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Membership {
        id,
        predecessor,
        lease,
    })
}

/// Three times per lease, removes hosts whose lease lapsed and adopts the
/// executions no living host drives (webhook deliveries need no adoption: a
/// claimed one is due again once its claim lapses). The lease itself is renewed
/// by the store's heartbeat thread.
pub fn start(store: Store, dispatcher: Arc<Dispatcher>) {
    let Some(host) = store.host().cloned() else {
        return;
    };
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(host.lease / 3);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(error) = store.remove_lapsed_hosts().await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "looking for lapsed hosts failed"
                );
            }
            if let Err(error) = dispatcher.adopt().await {
                tracing::warn!(error = format!("{error:#}"), "adopting executions failed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_run_joins_anew_and_names_the_run_before_it() {
        let data = tempfile::tempdir().unwrap();
        let first = join(data.path(), Duration::from_secs(10)).unwrap();
        assert_eq!(first.predecessor, None);
        let second = join(data.path(), Duration::from_secs(10)).unwrap();
        assert_ne!(second.id, first.id);
        assert_eq!(second.predecessor.as_deref(), Some(first.id.as_str()));
    }
}
