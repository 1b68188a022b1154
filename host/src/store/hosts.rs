//! Hosts sharing one PostgreSQL database: their leases, and what they tell each
//! other ([`Store::listen`], PostgreSQL's `LISTEN`/`NOTIFY`).
//!
//! A host has an entry in `hosts` with the time its lease lapses; it renews the
//! lease well before then ([`renew`], through a [`Heartbeat`]: a connection of its
//! own, so that a busy writer never delays it). Every write batch of a host first
//! takes its entry `FOR KEY SHARE` ([`begin_sql`]: renewals do not wait for it,
//! removals do), and a host whose lease lapsed has its entry removed by another
//! ([`remove_lapsed`]): the removal waits for the batch in flight, and every later
//! batch of the lapsed host finds no entry and stops the process ([`fenced`]).
//! Work (executions, webhook deliveries) that no living host drives is then
//! adopted by the others. Times are the database's, so hosts' clocks need not
//! agree.

use anyhow::{Context, Result, bail};
use postgres::{Client, NoTls};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Engine, Session, Store};

/// Who a host is among those sharing a PostgreSQL store.
#[derive(Debug, Clone)]
pub struct Membership {
    /// this run's id
    pub id: String,
    /// the id of the same host's previous run, whose work this one takes over
    pub predecessor: Option<String>,
    /// how long the host's lease lasts unless renewed
    pub lease: std::time::Duration,
}

/// A host's lease as the host itself counts it: from when it asked for each
/// renewal, so it lapses here no later than in the database.
pub(super) struct Lease {
    host: Membership,
    until: Mutex<std::time::Instant>,
    heartbeat: Heartbeat,
}

impl Lease {
    /// `host`'s lease, taken when it `asked` to join the hosts at `url`, and
    /// renewed from now on by a thread of its own (see [`Lease::beat`]).
    pub(super) fn start(
        host: &Membership,
        asked: std::time::Instant,
        url: &str,
    ) -> Result<Arc<Lease>> {
        let lease = Arc::new(Lease {
            host: host.clone(),
            until: Mutex::new(asked + host.lease),
            heartbeat: Heartbeat::connect(url)?,
        });
        let beating = Arc::downgrade(&lease);
        std::thread::Builder::new()
            .name("store-heartbeat".into())
            .spawn(move || Lease::beat(&beating))?;
        Ok(lease)
    }

    /// Renews the lease three times per lease, on a thread of its own: neither a
    /// busy async runtime nor the writer can delay it. Stops the process when the
    /// host's entry is gone (other hosts took its work over); ends with the store.
    fn beat(lease: &std::sync::Weak<Lease>) {
        loop {
            let Some(lease) = lease.upgrade() else {
                return;
            };
            std::thread::sleep(lease.host.lease / 3);
            let asked = std::time::Instant::now();
            match lease.heartbeat.renew(&lease.host.id, lease.host.lease) {
                Ok(true) => *lease.until.lock().expect("lease poisoned") = asked + lease.host.lease,
                Ok(false) => fenced(&lease.host.id),
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "renewing this host's lease failed"
                    );
                    lease.check();
                }
            }
        }
    }

    /// Stops the process once the lease has lapsed by this host's count.
    fn check(&self) {
        if std::time::Instant::now() >= *self.until.lock().expect("lease poisoned") {
            fenced(&self.host.id);
        }
    }
}

impl Store {
    /// This host, when it shares the store with others.
    pub fn host(&self) -> Option<&Membership> {
        self.lease.as_ref().map(|lease| &lease.host)
    }

    /// Removes the hosts whose lease lapsed (their work is then adopted).
    pub async fn remove_lapsed_hosts(&self) -> Result<()> {
        if self.lease.is_none() {
            return Ok(());
        }
        // Not a write of the batch: the removal may wait for a lapsed host's batch
        // to end, and counts as none of this host's commits.
        let Some(lapsed) = self.autocommit_blocking(remove_lapsed).await else {
            return Ok(());
        };
        let lapsed = lapsed?;
        for host in lapsed {
            tracing::warn!(%host, "a host's lease lapsed: its work is taken over");
        }
        Ok(())
    }

    /// Stops the process if this host's lease has lapsed (it could not renew it in
    /// time): other hosts may be taking over its work, so it must not act on any.
    pub fn check_lease(&self) {
        if let Some(lease) = &self.lease {
            lease.check();
        }
    }

    /// Calls `heard` with the payload of each notification other hosts send on
    /// `channel` (PostgreSQL's `NOTIFY`), and with `None` when some may have been
    /// missed; on redb, where there are no other hosts, never.
    pub fn listen(
        &self,
        channel: &'static str,
        heard: impl FnMut(Option<String>) + Send + 'static,
    ) -> Result<()> {
        match &self.engine {
            Engine::Redb(_) => Ok(()),
            Engine::Postgres(pool) => listen(pool.url(), channel, heard),
        }
    }
}

/// Adds the entry of host `id` with a lease of `lease`, and removes that of
/// `predecessor` (the same host's previous run, whose work it takes over at once).
pub(super) fn register(
    session: &Session,
    id: &str,
    predecessor: Option<&str>,
    lease: Duration,
) -> Result<()> {
    if let Some(predecessor) = predecessor {
        session.execute("DELETE FROM hosts WHERE id = $1", &[&predecessor])?;
    }
    session.execute(
        "INSERT INTO hosts (id, expires_at) VALUES ($1, now() + make_interval(secs => $2))",
        &[&id, &lease.as_secs_f64()],
    )?;
    Ok(())
}

/// The statement that begins a write batch of host `id`: a row when the host's
/// entry lives (and it is held until the batch ends).
pub(super) fn begin_sql(id: &str) -> String {
    // The id is a UUID the host made itself; quoted all the same.
    let id = id.replace('\'', "''");
    format!("BEGIN; SELECT 1 FROM hosts WHERE id = '{id}' FOR KEY SHARE")
}

/// A write batch found its host's entry gone: another host took over this one's
/// work, and it must not write again.
pub(super) fn fenced(id: &str) -> ! {
    tracing::error!(host = %id, "this host's lease lapsed and other hosts took over its work; exiting");
    std::process::exit(75)
}

/// Renews host `id`'s lease for `lease` from now; `false` when its entry is gone.
pub fn renew(pg: &Session, id: &str, lease: Duration) -> Result<bool> {
    let renewed = pg.execute(
        "UPDATE hosts SET expires_at = now() + make_interval(secs => $2) WHERE id = $1",
        &[&id, &lease.as_secs_f64()],
    )?;
    Ok(renewed == 1)
}

/// Removes the entries of hosts whose lease lapsed; their ids.
pub fn remove_lapsed(pg: &Session) -> Result<Vec<String>> {
    let rows = pg.query(
        "DELETE FROM hosts WHERE expires_at < now() RETURNING id",
        &[],
    )?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// A connection of its own, for a host's lease renewals: a writer busy with a long
/// batch, or waiting for another host's, never delays them.
pub struct Heartbeat {
    url: String,
    session: Mutex<Option<Session>>,
}

impl Heartbeat {
    /// Connects at once: a renewal needs no new connection unless this one is
    /// lost (when the server may be refusing more).
    pub fn connect(url: &str) -> Result<Heartbeat> {
        Ok(Heartbeat {
            url: url.to_string(),
            session: Mutex::new(Some(Session::connect(url, None)?)),
        })
    }

    /// Renews host `id`'s lease for `lease` (see [`super::hosts::renew`]); a lost
    /// connection is made again on the next call.
    pub fn renew(&self, id: &str, lease: std::time::Duration) -> Result<bool> {
        let mut session = self.session.lock().expect("heartbeat poisoned");
        let connected = match session.take() {
            Some(connected) if !connected.is_closed() => connected,
            _ => Session::connect(&self.url, None)?,
        };
        let renewed = super::hosts::renew(&connected, id, lease)?;
        *session = Some(connected);
        Ok(renewed)
    }
}

impl Drop for Heartbeat {
    /// A connection must not be closed on an async runtime's thread (see the pool's
    /// `Drop`): it is closed on a thread of its own.
    fn drop(&mut self) {
        let session = self
            .session
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(session) = session {
            let _ = std::thread::Builder::new()
                .name("store-heartbeat-close".into())
                .spawn(move || drop(session));
        }
    }
}

/// Calls `heard` with the payload of each notification on `channel`, from a
/// thread of its own; and with `None` each time the connection was lost and made
/// again (notifications meanwhile were missed).
pub fn listen(
    url: &str,
    channel: &'static str,
    mut heard: impl FnMut(Option<String>) + Send + 'static,
) -> Result<()> {
    let url = url.to_string();
    std::thread::Builder::new()
        .name(format!("listen-{channel}"))
        .spawn(move || {
            let mut lost = false;
            loop {
                let error = hear(&url, channel, lost, &mut heard).unwrap_err();
                tracing::warn!(
                    channel,
                    error = format!("{error:#}"),
                    "listening for other hosts' changes failed; listening again in a second"
                );
                lost = true;
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        })?;
    Ok(())
}

/// Listens on a new connection until it fails; `lost` says a previous one did.
fn hear(
    url: &str,
    channel: &str,
    lost: bool,
    heard: &mut impl FnMut(Option<String>),
) -> Result<std::convert::Infallible> {
    use ::postgres::fallible_iterator::FallibleIterator;
    let mut client = Client::connect(url, NoTls).context("connecting to PostgreSQL")?;
    client.batch_execute(&format!("LISTEN {channel}"))?;
    if lost {
        // Listening again: whatever changed meanwhile is looked at anew.
        heard(None);
    }
    let mut notifications = client.notifications();
    let mut heard_each = notifications.blocking_iter();
    while let Some(notification) = heard_each.next()? {
        heard(Some(notification.payload().to_string()));
    }
    bail!("the connection closed")
}
