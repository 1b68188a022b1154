//! `[store]`: where the platform's state lives.

use anyhow::{Result, bail};
use serde::Deserialize;

/// `backend = "redb"` (the default: one file in the data directory) or `backend =
/// "postgres"`, whose connection URL is `MODELROUTE_DATABASE_URL` when set, else
/// `url`; and how durable an acknowledged change is (`durability`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    #[serde(default)]
    pub backend: Backend,
    /// `postgres://user:password@host:5432/database` (or libpq's `key=value` form)
    #[serde(default)]
    pub url: Option<String>,
    /// How long a host's lease lasts: a host that dies has its work taken over by
    /// the others this long after its last renewal (it renews three times per lease).
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u64,
    #[serde(default)]
    pub durability: Durability,
    /// `batched`: the longest an acknowledged change waits to be made durable
    #[serde(default = "default_durable_within_ms")]
    pub durable_within_ms: u64,
    /// the embedded backend's page cache, in MiB (what it keeps of the file in
    /// memory beyond the kernel's own page cache)
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
    /// PostgreSQL: the most connections a host reads with at once (its writer, its
    /// lease's heartbeat and its two listeners use one more each)
    #[serde(default = "default_pool_size")]
    pub pool_size: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            backend: Backend::default(),
            url: None,
            lease_seconds: default_lease_seconds(),
            durability: Durability::default(),
            durable_within_ms: default_durable_within_ms(),
            cache_mb: default_cache_mb(),
            pool_size: default_pool_size(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Redb,
    Postgres,
}

/// When a change is acknowledged (SPEC §13).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// once it is on disk
    #[default]
    Strict,
    /// once it is committed in memory; on disk within `durable_within_ms`
    Batched,
}

fn default_lease_seconds() -> u64 {
    10
}

fn default_durable_within_ms() -> u64 {
    10
}

/// The door measures the same throughput with 16 MiB as with 64 and 66 MB less
/// RSS: recent pages are read back from the kernel's page cache (README,
/// *Performance*).
fn default_cache_mb() -> u64 {
    16
}

/// Enough for the reads of a few hundred requests in flight, and three hosts stay
/// well within PostgreSQL's default `max_connections` (100).
fn default_pool_size() -> u64 {
    16
}

/// The fewest and most read connections of a host.
const POOL_SIZE: std::ops::RangeInclusive<u64> = 1..=1_000;

/// The smallest and largest page caches.
const CACHE_MB: std::ops::RangeInclusive<u64> = 1..=65_536;

/// The shortest and longest leases allowed.
const LEASE_SECONDS: std::ops::RangeInclusive<u64> = 1..=600;

/// The shortest and longest windows of `batched` durability: past a minute an
/// operator wants a backup, not a durability mode.
const DURABLE_WITHIN_MS: std::ops::RangeInclusive<u64> = 1..=60_000;

impl StoreSettings {
    /// Takes the database URL from the environment's `MODELROUTE_DATABASE_URL`, when
    /// set, and checks that the PostgreSQL backend has one that parses, and that
    /// the other settings are usable (and belong to the chosen backend).
    pub fn resolve(&mut self, environment_url: Option<String>) -> Result<()> {
        if !DURABLE_WITHIN_MS.contains(&self.durable_within_ms) {
            bail!(
                "store.durable_within_ms: {} is out of range ({} to {})",
                self.durable_within_ms,
                DURABLE_WITHIN_MS.start(),
                DURABLE_WITHIN_MS.end()
            );
        }
        if !CACHE_MB.contains(&self.cache_mb) {
            bail!(
                "store.cache_mb: {} is out of range ({} to {})",
                self.cache_mb,
                CACHE_MB.start(),
                CACHE_MB.end()
            );
        }
        if !POOL_SIZE.contains(&self.pool_size) {
            bail!(
                "store.pool_size: {} is out of range ({} to {})",
                self.pool_size,
                POOL_SIZE.start(),
                POOL_SIZE.end()
            );
        }
        if self.backend == Backend::Redb {
            if self.url.is_some() {
                bail!("store.url: only for backend = \"postgres\" (the backend is redb)");
            }
            return Ok(());
        }
        if let Some(url) = environment_url {
            self.url = Some(url);
        }
        let Some(url) = &self.url else {
            bail!(
                "store: backend = \"postgres\" needs the database's URL: set MODELROUTE_DATABASE_URL or [store] url"
            );
        };
        if let Err(error) = url.parse::<postgres::Config>() {
            bail!("store.url: not a PostgreSQL connection URL ({error})");
        }
        if !LEASE_SECONDS.contains(&self.lease_seconds) {
            bail!(
                "store.lease_seconds: {} is out of range ({} to {})",
                self.lease_seconds,
                LEASE_SECONDS.start(),
                LEASE_SECONDS.end()
            );
        }
        Ok(())
    }

    /// How long a host's lease lasts (PostgreSQL; redb has one host).
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.lease_seconds)
    }

    /// The PostgreSQL URL, when that is the backend.
    pub fn postgres_url(&self) -> Option<&str> {
        match self.backend {
            Backend::Redb => None,
            Backend::Postgres => self.url.as_deref(),
        }
    }

    /// PostgreSQL: the most connections reads use at once.
    pub fn connections(&self) -> usize {
        usize::try_from(self.pool_size).unwrap_or(usize::MAX)
    }

    /// The most threads the server's async runtime may add for blocking work: a
    /// PostgreSQL read holds one for its statements (`block_in_place`), and more
    /// than `pool_size` of them would only wait for a connection while each thread
    /// keeps its own allocator cache (at 64 connections, 117 threads and 345 MB);
    /// the rest serve file I/O and plugin loads.
    pub fn blocking_threads(&self) -> usize {
        self.connections().saturating_add(8)
    }

    /// The embedded backend's page cache, in bytes.
    pub fn cache_bytes(&self) -> usize {
        usize::try_from(self.cache_mb << 20).unwrap_or(usize::MAX)
    }

    /// The writes' durability, for the store.
    pub fn commits(&self) -> crate::store::Commits {
        match self.durability {
            Durability::Strict => crate::store::Commits::Durable,
            Durability::Batched => crate::store::Commits::DurableWithin(
                std::time::Duration::from_millis(self.durable_within_ms),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(toml: &str) -> Result<StoreSettings> {
        #[derive(Deserialize)]
        struct Config {
            store: StoreSettings,
        }
        Ok(toml::from_str::<Config>(toml)?.store)
    }

    #[test]
    fn the_backend_is_chosen_by_name_and_postgres_needs_a_url_that_parses() {
        assert_eq!(
            store("[store]\nbackend = \"redb\"").unwrap().backend,
            Backend::Redb
        );
        let mut settings = store("[store]\nbackend = \"postgres\"").unwrap();
        let missing = settings.resolve(None).unwrap_err().to_string();
        assert!(missing.contains("MODELROUTE_DATABASE_URL"), "{missing}");
        settings
            .resolve(Some("postgres://mr@127.0.0.1:5432/test".into()))
            .unwrap();
        assert_eq!(
            settings.postgres_url(),
            Some("postgres://mr@127.0.0.1:5432/test")
        );
        let mut bad =
            store("[store]\nbackend = \"postgres\"\nurl = \"postgres://h:notaport/x\"").unwrap();
        assert!(
            bad.resolve(None)
                .unwrap_err()
                .to_string()
                .contains("store.url")
        );
        assert!(store("[store]\nbackend = \"mysql\"").is_err());
        assert!(store("[store]\nbackend = \"postgres\"\nuri = \"x\"").is_err());
    }

    #[test]
    fn the_lease_defaults_to_ten_seconds_and_an_unusable_one_is_refused_by_name() {
        let url = Some("postgres://mr@127.0.0.1:5432/test".to_string());
        let mut settings = store("[store]\nbackend = \"postgres\"").unwrap();
        settings.resolve(url.clone()).unwrap();
        assert_eq!(settings.lease(), std::time::Duration::from_secs(10));
        let mut short = store("[store]\nbackend = \"postgres\"\nlease_seconds = 3").unwrap();
        short.resolve(url.clone()).unwrap();
        assert_eq!(short.lease(), std::time::Duration::from_secs(3));
        for refused in ["0", "601"] {
            let mut settings = store(&format!(
                "[store]\nbackend = \"postgres\"\nlease_seconds = {refused}"
            ))
            .unwrap();
            let error = settings.resolve(url.clone()).unwrap_err().to_string();
            assert!(error.contains("store.lease_seconds"), "{error}");
        }
    }

    #[test]
    fn a_host_reads_over_sixteen_connections_unless_told_and_zero_is_refused_by_name() {
        let url = Some("postgres://mr@127.0.0.1:5432/test".to_string());
        let mut settings = store("[store]\nbackend = \"postgres\"").unwrap();
        settings.resolve(url.clone()).unwrap();
        assert_eq!(settings.connections(), 16);
        let mut more = store("[store]\nbackend = \"postgres\"\npool_size = 64").unwrap();
        more.resolve(url.clone()).unwrap();
        assert_eq!(more.connections(), 64);
        for refused in ["0", "1001"] {
            let mut settings = store(&format!(
                "[store]\nbackend = \"postgres\"\npool_size = {refused}"
            ))
            .unwrap();
            let error = settings.resolve(url.clone()).unwrap_err().to_string();
            assert!(error.contains("store.pool_size"), "{error}");
        }
    }
}

#[cfg(test)]
mod durability_tests {
    use super::*;

    fn resolved(toml: &str) -> Result<StoreSettings> {
        #[derive(Deserialize)]
        struct Config {
            store: StoreSettings,
        }
        let mut settings = toml::from_str::<Config>(toml)?.store;
        settings.resolve(Some("postgres://mr@127.0.0.1:5432/test".into()))?;
        Ok(settings)
    }

    #[test]
    fn durability_is_strict_unless_batched_is_asked_with_a_window_in_range() {
        let strict = resolved("[store]").unwrap();
        assert_eq!(strict.commits(), crate::store::Commits::Durable);
        for backend in ["redb", "postgres"] {
            let batched = resolved(&format!(
                "[store]\nbackend = \"{backend}\"\ndurability = \"batched\""
            ))
            .unwrap();
            assert_eq!(
                batched.commits(),
                crate::store::Commits::DurableWithin(std::time::Duration::from_millis(10))
            );
        }
        let wide = resolved("[store]\ndurability = \"batched\"\ndurable_within_ms = 250").unwrap();
        assert_eq!(
            wide.commits(),
            crate::store::Commits::DurableWithin(std::time::Duration::from_millis(250))
        );
        for refused in ["0", "60001"] {
            let error = resolved(&format!("[store]\ndurable_within_ms = {refused}"))
                .unwrap_err()
                .to_string();
            assert!(error.contains("store.durable_within_ms"), "{error}");
        }
        assert_eq!(strict.cache_bytes(), 16 << 20);
        assert_eq!(strict.blocking_threads(), 16 + 8);
        assert_eq!(
            resolved("[store]\ncache_mb = 8").unwrap().cache_bytes(),
            8 << 20
        );
        for refused in ["0", "65537"] {
            let error = resolved(&format!("[store]\ncache_mb = {refused}"))
                .unwrap_err()
                .to_string();
            assert!(error.contains("store.cache_mb"), "{error}");
        }
        let error = resolved("[store]\ndurability = \"eventual\"")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("strict") && error.contains("batched"),
            "{error}"
        );
    }

    #[test]
    fn a_postgres_url_given_to_the_embedded_backend_is_refused() {
        #[derive(Deserialize)]
        struct Config {
            store: StoreSettings,
        }
        let mut settings = toml::from_str::<Config>("[store]\nurl = \"postgres://h/x\"")
            .unwrap()
            .store;
        let error = settings.resolve(None).unwrap_err().to_string();
        assert!(error.contains("store.url"), "{error}");
    }
}
