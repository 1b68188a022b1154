//! `[store]`: where the platform's state lives.

use anyhow::{Result, bail};
use serde::Deserialize;

/// `backend = "redb"` (the default: one file in the data directory) or `backend =
/// "postgres"`, whose connection URL is `MODELROUTE_DATABASE_URL` when set, else
/// `url`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum StoreSettings {
    #[default]
    Redb,
    Postgres(PostgresSettings),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    /// `postgres://user:password@host:5432/database` (or libpq's `key=value` form)
    #[serde(default)]
    pub url: Option<String>,
    /// How long a host's lease lasts: a host that dies has its work taken over by
    /// the others this long after its last renewal (it renews three times per lease).
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u64,
}

fn default_lease_seconds() -> u64 {
    10
}

/// The shortest and longest leases allowed.
const LEASE_SECONDS: std::ops::RangeInclusive<u64> = 1..=600;

impl StoreSettings {
    /// Takes the database URL from the environment's `MODELROUTE_DATABASE_URL`, when
    /// set, and checks that the PostgreSQL backend has one that parses.
    pub fn resolve(&mut self, environment_url: Option<String>) -> Result<()> {
        let StoreSettings::Postgres(settings) = self else {
            return Ok(());
        };
        if let Some(url) = environment_url {
            settings.url = Some(url);
        }
        let Some(url) = &settings.url else {
            bail!(
                "store: backend = \"postgres\" needs the database's URL: set MODELROUTE_DATABASE_URL or [store] url"
            );
        };
        if let Err(error) = url.parse::<postgres::Config>() {
            bail!("store.url: not a PostgreSQL connection URL ({error})");
        }
        if !LEASE_SECONDS.contains(&settings.lease_seconds) {
            bail!(
                "store.lease_seconds: {} is out of range ({} to {})",
                settings.lease_seconds,
                LEASE_SECONDS.start(),
                LEASE_SECONDS.end()
            );
        }
        Ok(())
    }

    /// How long a host's lease lasts (PostgreSQL; redb has one host).
    pub fn lease(&self) -> std::time::Duration {
        let seconds = match self {
            StoreSettings::Redb => default_lease_seconds(),
            StoreSettings::Postgres(settings) => settings.lease_seconds,
        };
        std::time::Duration::from_secs(seconds)
    }

    /// The PostgreSQL URL, when that is the backend.
    pub fn postgres_url(&self) -> Option<&str> {
        match self {
            StoreSettings::Redb => None,
            StoreSettings::Postgres(settings) => settings.url.as_deref(),
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
        assert!(matches!(
            store("[store]\nbackend = \"redb\"").unwrap(),
            StoreSettings::Redb
        ));
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
}
