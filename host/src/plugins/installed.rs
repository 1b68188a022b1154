//! Adapter versions swapped in at runtime (an install or a rollback through the
//! admin API, an automatic rollback, a file changed in the plugins directory), kept
//! in the data directory so that a restart brings back what ran before it.
//!
//! `installed.json` names, per adapter, the active version, the rollback target and
//! the sha256 of the adapter's file in `plugins_dir` when the entry was written;
//! `<sha256>.wasm` holds each component named there. Components are written before
//! the record that names them, each durably (file and directory synced), and a
//! component is checked against its sha256 when it is read back.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{LoadedPlugin, Runtime};
use crate::durable;

const RECORDS: &str = "installed.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    active: Version,
    previous: Option<Version>,
    /// the sha256 of the adapter's file in `plugins_dir` as the server last saw it
    plugins_dir: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Version {
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
    dir: PathBuf,
    records: Mutex<BTreeMap<String, Record>>,
    /// the sha256 of each adapter's file in `plugins_dir`, as last seen
    plugins_dir: Mutex<BTreeMap<String, String>>,
}

impl Installed {
    /// Opens (creating) the directory and reads what it keeps.
    pub fn open(dir: &Path) -> Result<Installed> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(RECORDS);
        let records = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading the installed adapters {}", path.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", path.display()));
            }
        };
        Ok(Installed {
            dir: dir.to_path_buf(),
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
        for plugin in std::iter::once(active).chain(previous) {
            self.keep_component(plugin)?;
        }
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
        let path = self.dir.join(RECORDS);
        durable::write(&path, &serde_json::to_vec_pretty(&next)?)
            .with_context(|| format!("writing {}", path.display()))?;
        *records = next;
        self.remove_unnamed_components(&records);
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
                    self.dir.join(RECORDS).display()
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
        let path = self.component_path(&version.sha256)?;
        let wasm = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let sha256 = hex::encode(Sha256::digest(&wasm));
        if sha256 != version.sha256 {
            bail!("{} is damaged: its sha256 is {sha256}", path.display());
        }
        let plugin = runtime.load_validated(&wasm)?;
        if plugin.name != name {
            bail!("{} is the adapter {:?}", path.display(), plugin.name);
        }
        Ok(plugin)
    }

    /// Writes `plugin`'s component unless an intact copy is there.
    fn keep_component(&self, plugin: &LoadedPlugin) -> Result<()> {
        let path = self.component_path(&plugin.sha256)?;
        let intact = std::fs::read(&path)
            .is_ok_and(|bytes| hex::encode(Sha256::digest(&bytes)) == plugin.sha256);
        if !intact {
            durable::write(&path, &plugin.wasm)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// Removes components no record names any more (best effort).
    fn remove_unnamed_components(&self, records: &BTreeMap<String, Record>) {
        let named: std::collections::HashSet<&str> = records
            .values()
            .flat_map(|record| std::iter::once(&record.active).chain(&record.previous))
            .map(|version| version.sha256.as_str())
            .collect();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let unnamed = path.extension().is_some_and(|ext| ext == "wasm")
                && path
                    .file_stem()
                    .and_then(|stem| stem.to_str())
                    .is_some_and(|stem| is_sha256(stem) && !named.contains(stem));
            if unnamed && let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "removing an adapter no longer kept failed");
            }
        }
    }

    fn component_path(&self, sha256: &str) -> Result<PathBuf> {
        if !is_sha256(sha256) {
            bail!("{sha256:?} is not a sha256");
        }
        Ok(self.dir.join(format!("{sha256}.wasm")))
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
    use crate::plugins::tests::{component, runtime};
    use crate::plugins::{Registry, load_all};

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
            RECORDS.to_string(),
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
