//! Adapter versions swapped in at runtime (an install or a rollback through the
//! admin API, an automatic rollback, a file changed in the plugins directory), kept
//! so that a restart brings back what ran before it: in the data directory
//! ([`dir`]) on one host, in the database ([`db`]) when hosts share one, where a
//! swap made through any host reaches every other at once (`NOTIFY`).
//!
//! A record names, per adapter, the active version, the rollback target and the
//! sha256 of the adapter's file in `plugins_dir` when the record was written; the
//! components named are kept beside it. Components are written before the record
//! that names them, and a component is checked against its sha256 when it is read
//! back.

mod db;
mod dir;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{LoadedPlugin, Registry, Runtime};
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Record {
    active: Version,
    previous: Option<Version>,
    /// the sha256 of the adapter's file in `plugins_dir` as the server last saw it
    plugins_dir: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Version {
    sha256: String,
    /// the manifest's version, for an operator reading the file
    version: String,
}

impl Version {
    fn of(plugin: &LoadedPlugin) -> Version {
        Version {
            sha256: plugin.sha256.clone(),
            version: plugin.version.clone(),
        }
    }
}

/// The versions kept for one adapter, loaded and validated.
pub struct Kept {
    pub name: String,
    pub active: Arc<LoadedPlugin>,
    pub previous: Option<Arc<LoadedPlugin>>,
    /// what the adapter's file in `plugins_dir` was when this was kept
    pub plugins_dir: Option<String>,
}

pub struct Installed {
    keeping: Keeping,
    records: Mutex<BTreeMap<String, Record>>,
    /// the sha256 of each adapter's file in `plugins_dir`, as last seen
    plugins_dir: Mutex<BTreeMap<String, String>>,
}

impl Installed {
    /// Opens (creating) the directory and reads what it keeps.
    pub fn open(dir: &Path) -> Result<Installed> {
        Installed::with(Keeping::Dir(dir::Dir::open(dir)?))
    }

    /// What the hosts sharing `store` keep.
    pub fn shared(store: &Store) -> Result<Installed> {
        Installed::with(Keeping::Database(store.clone()))
    }

    fn with(keeping: Keeping) -> Result<Installed> {
        let records = keeping.records()?;
        Ok(Installed {
            keeping,
            records: Mutex::new(records),
            plugins_dir: Mutex::default(),
        })
    }

    /// Notes the sha256 of `name`'s file in `plugins_dir`.
    pub fn saw_in_plugins_dir(&self, name: &str, sha256: &str) {
        self.plugins_dir
            .lock()
            .expect("installed poisoned")
            .insert(name.to_string(), sha256.to_string());
    }

    /// Writes that `active` runs, with `previous` as its rollback target. Nothing
    /// is changed when this fails.
    pub(super) fn save(
        &self,
        active: &LoadedPlugin,
        previous: Option<&LoadedPlugin>,
    ) -> Result<()> {
        let record = Record {
            active: Version::of(active),
            previous: previous.map(Version::of),
            plugins_dir: self
                .plugins_dir
                .lock()
                .expect("installed poisoned")
                .get(&active.name)
                .cloned(),
        };
        let mut records = self.records.lock().expect("installed poisoned");
        let mut next = records.clone();
        next.insert(active.name.clone(), record);
        let components: Vec<&LoadedPlugin> = std::iter::once(active).chain(previous).collect();
        self.keeping.save(&next, &active.name, &components)?;
        *records = next;
        self.keeping.forget_unnamed(&records);
        Ok(())
    }

    /// Loads every kept version (checked against its sha256, validated). An active
    /// version that cannot be restored stops start-up: silently running another one
    /// would undo the operator's install. A rollback target that cannot is dropped.
    pub fn load(&self, runtime: &Arc<Runtime>) -> Result<Vec<Kept>> {
        let records = self.records.lock().expect("installed poisoned").clone();
        let mut kept = Vec::new();
        for (name, record) in records {
            let active = self.load_version(runtime, &name, &record.active).with_context(|| {
                format!(
                    "restoring the adapter {name:?} installed at runtime (remove its entry from {} to run the plugins directory's version instead)",
                    self.keeping
                )
            })?;
            let previous = record.previous.as_ref().and_then(|version| {
                self.load_version(runtime, &name, version)
                    .inspect_err(|error| {
                        tracing::error!(plugin = %name, sha256 = %version.sha256, error = format!("{error:#}"), "the rollback target kept for an adapter cannot be restored: dropped")
                    })
                    .ok()
            });
            kept.push(Kept {
                name,
                active,
                previous,
                plugins_dir: record.plugins_dir,
            });
        }
        Ok(kept)
    }

    fn load_version(
        &self,
        runtime: &Arc<Runtime>,
        name: &str,
        version: &Version,
    ) -> Result<Arc<LoadedPlugin>> {
        let wasm = self.keeping.component(&version.sha256)?;
        let sha256 = hex::encode(Sha256::digest(&wasm));
        if sha256 != version.sha256 {
            bail!(
                "the component {} kept in {} is damaged: its sha256 is {sha256}",
                version.sha256,
                self.keeping
            );
        }
        let plugin = runtime.load_validated(&wasm)?;
        if plugin.name != name {
            bail!(
                "the component {} kept in {} is the adapter {:?}",
                version.sha256,
                self.keeping,
                plugin.name
            );
        }
        Ok(plugin)
    }

    /// Another host swapped `name` (or, for `None`, any adapter: some news may have
    /// been missed): reads what is kept now and makes it active here.
    pub fn follow(&self, runtime: &Arc<Runtime>, registry: &Registry, name: Option<&str>) {
        let records = match self.keeping.records() {
            Ok(records) => records,
            Err(error) => {
                return tracing::error!(
                    error = format!("{error:#}"),
                    "reading the adapters other hosts installed failed"
                );
            }
        };
        *self.records.lock().expect("installed poisoned") = records.clone();
        for (adapter, record) in records {
            if name.is_some_and(|name| name != adapter)
                || registry
                    .get(&adapter)
                    .is_some_and(|active| active.sha256 == record.active.sha256)
            {
                continue;
            }
            let active = match self.load_version(runtime, &adapter, &record.active) {
                Ok(active) => active,
                Err(error) => {
                    tracing::error!(plugin = %adapter, error = format!("{error:#}"), "an adapter another host installed cannot be loaded here: this host keeps its version");
                    continue;
                }
            };
            let previous = record
                .previous
                .as_ref()
                .and_then(|version| self.load_version(runtime, &adapter, version).ok());
            let (version, sha256) = (active.version.clone(), active.sha256.clone());
            let still_current = || {
                self.keeping.records().is_ok_and(|records| {
                    records
                        .get(&adapter)
                        .is_some_and(|now| now.active.sha256 == sha256)
                })
            };
            if registry.follow(active, previous, still_current) {
                tracing::info!(plugin = %adapter, %version, %sha256, "plugin swapped in by another host");
            }
        }
    }
}

/// Makes the adapters other hosts sharing `store` swap in active here too (on
/// PostgreSQL; on redb there are no other hosts).
pub fn follow_other_hosts(
    store: &Store,
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
) -> Result<()> {
    store.listen(db::SWAPPED, move |name| {
        if let Some(installed) = registry.installed() {
            installed.follow(&runtime, &registry, name.as_deref());
        }
    })
}

/// Where the records and components are kept.
enum Keeping {
    Dir(dir::Dir),
    Database(Store),
}

impl Keeping {
    fn records(&self) -> Result<BTreeMap<String, Record>> {
        match self {
            Keeping::Dir(dir) => dir.records(),
            Keeping::Database(store) => store.read(db::records),
        }
    }

    /// Keeps `components`, then `records` (in which `changed` changed).
    fn save(
        &self,
        records: &BTreeMap<String, Record>,
        changed: &str,
        components: &[&LoadedPlugin],
    ) -> Result<()> {
        match self {
            Keeping::Dir(dir) => {
                for plugin in components {
                    dir.keep_component(&plugin.sha256, &plugin.wasm)?;
                }
                dir.save(records)
            }
            Keeping::Database(store) => {
                let record = &records[changed];
                let kept = store.autocommit(|pg| {
                    for plugin in components {
                        db::keep_component(pg, &plugin.sha256, &plugin.wasm)?;
                    }
                    db::save(pg, changed, record)
                });
                kept.expect("a database store")
            }
        }
    }

    fn component(&self, sha256: &str) -> Result<Vec<u8>> {
        if !is_sha256(sha256) {
            bail!("{sha256:?} is not a sha256");
        }
        match self {
            Keeping::Dir(dir) => dir.component(sha256),
            Keeping::Database(store) => store
                .read(|snapshot| db::component(snapshot, sha256))?
                .with_context(|| format!("the component {sha256} is not in the database")),
        }
    }

    /// Removes components no record names any more (best effort).
    fn forget_unnamed(&self, records: &BTreeMap<String, Record>) {
        let named: std::collections::HashSet<&str> = records
            .values()
            .flat_map(|record| std::iter::once(&record.active).chain(&record.previous))
            .map(|version| version.sha256.as_str())
            .collect();
        match self {
            Keeping::Dir(dir) => dir.forget_unnamed(|sha256| named.contains(sha256)),
            Keeping::Database(store) => {
                if let Some(Err(error)) = store.autocommit(db::forget_unnamed) {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "removing adapters no longer kept failed"
                    );
                }
            }
        }
    }
}

impl std::fmt::Display for Keeping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keeping::Dir(dir) => write!(f, "{dir}"),
            Keeping::Database(_) => f.write_str("the database (installed_adapters)"),
        }
    }
}

fn is_sha256(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::PluginLimits;
    use crate::plugins::load_all;
    use crate::plugins::tests::{component, runtime};

    /// The same component with a custom section appended: valid, a new sha256.
    fn rebuilt(wasm: &[u8], marker: u8) -> Vec<u8> {
        let name = b"modelroute:test-build";
        let mut bytes = wasm.to_vec();
        bytes.extend_from_slice(&[0x00, (1 + name.len() + 1) as u8, name.len() as u8]);
        bytes.extend_from_slice(name);
        bytes.push(marker);
        bytes
    }

    fn sha256(wasm: &[u8]) -> String {
        hex::encode(Sha256::digest(wasm))
    }

    /// A server start: the registry as `load_all` leaves it.
    fn start(runtime: &Arc<Runtime>, data: &Path, plugins: &Path) -> Result<Registry> {
        let registry = Registry::persistent(Installed::open(&data.join("installed"))?);
        load_all(runtime, &registry, plugins)?;
        Ok(registry)
    }

    /// (active, previous) sha256 of the openai adapter.
    fn openai(registry: &Registry) -> (String, Option<String>) {
        (
            registry.get("openai").unwrap().sha256.clone(),
            registry.previous("openai").map(|p| p.sha256.clone()),
        )
    }

    #[test]
    fn swaps_survive_a_restart_unless_the_plugins_directory_changed_since() {
        let runtime = runtime(PluginLimits::default());
        let (data, plugins) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let shipped = component("plugins/dist/openai.wasm");
        let installed = rebuilt(&shipped, 1);
        std::fs::write(plugins.path().join("openai.wasm"), &shipped).unwrap();

        let registry = start(&runtime, data.path(), plugins.path()).unwrap();
        assert_eq!(openai(&registry), (sha256(&shipped), None));
        registry
            .activate(runtime.load(&installed).unwrap())
            .unwrap();
        drop(registry);

        // An install is not undone by a restart, and keeps its rollback target.
        let registry = start(&runtime, data.path(), plugins.path()).unwrap();
        assert_eq!(
            openai(&registry),
            (sha256(&installed), Some(sha256(&shipped)))
        );
        // Nor is a rollback.
        registry.rollback("openai").unwrap().unwrap();
        drop(registry);
        let registry = start(&runtime, data.path(), plugins.path()).unwrap();
        assert_eq!(
            openai(&registry),
            (sha256(&shipped), Some(sha256(&installed)))
        );
        drop(registry);

        // A file dropped into the plugins directory while the server was stopped is
        // newer than what was kept: it is swapped in over it.
        let deployed = rebuilt(&shipped, 2);
        std::fs::write(plugins.path().join("openai.wasm"), &deployed).unwrap();
        let registry = start(&runtime, data.path(), plugins.path()).unwrap();
        assert_eq!(
            openai(&registry),
            (sha256(&deployed), Some(sha256(&shipped)))
        );
        drop(registry);
        let registry = start(&runtime, data.path(), plugins.path()).unwrap();
        assert_eq!(
            openai(&registry),
            (sha256(&deployed), Some(sha256(&shipped)))
        );
        drop(registry);
        // Only the components a record names are kept.
        let mut kept: Vec<String> = std::fs::read_dir(data.path().join("installed"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        kept.sort();
        let mut expected = vec![
            format!("{}.wasm", sha256(&deployed)),
            format!("{}.wasm", sha256(&shipped)),
            dir::RECORDS.to_string(),
        ];
        expected.sort();
        assert_eq!(kept, expected);
    }

    #[test]
    fn a_damaged_installed_adapter_stops_start_up_instead_of_running_the_old_one() {
        let runtime = runtime(PluginLimits::default());
        let (data, plugins) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let shipped = component("plugins/dist/openai.wasm");
        let installed = rebuilt(&shipped, 3);
        std::fs::write(plugins.path().join("openai.wasm"), &shipped).unwrap();
        let registry = start(&runtime, data.path(), plugins.path()).unwrap();
        registry
            .activate(runtime.load(&installed).unwrap())
            .unwrap();
        drop(registry);

        let kept = data
            .path()
            .join("installed")
            .join(format!("{}.wasm", sha256(&installed)));
        let mut damaged = std::fs::read(&kept).unwrap();
        damaged.truncate(damaged.len() / 2);
        std::fs::write(&kept, damaged).unwrap();
        let error = format!(
            "{:#}",
            start(&runtime, data.path(), plugins.path())
                .err()
                .expect("start-up refused")
        );
        assert!(error.contains("is damaged"), "{error}");
        assert!(error.contains("\"openai\""), "{error}");
    }
}
