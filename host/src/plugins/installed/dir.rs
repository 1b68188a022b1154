//! The records and components kept in the data directory (one host):
//! `installed.json` holds the records, `<sha256>.wasm` each component, each written
//! durably (file and directory synced).

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Record, is_sha256};
use crate::durable;

pub const RECORDS: &str = "installed.json";

pub struct Dir(PathBuf);

impl Dir {
    /// Opens (creating) the directory.
    pub fn open(dir: &Path) -> Result<Dir> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Dir(dir.to_path_buf()))
    }

    pub fn records(&self) -> Result<BTreeMap<String, Record>> {
        let path = self.0.join(RECORDS);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading the installed adapters {}", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, records: &BTreeMap<String, Record>) -> Result<()> {
        let path = self.0.join(RECORDS);
        durable::write(&path, &serde_json::to_vec_pretty(records)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Writes a component unless an intact copy is there.
    pub fn keep_component(&self, sha256: &str, wasm: &[u8]) -> Result<()> {
        let path = self.component_path(sha256);
        let intact =
            std::fs::read(&path).is_ok_and(|bytes| hex::encode(Sha256::digest(&bytes)) == sha256);
        if !intact {
            durable::write(&path, wasm).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    pub fn component(&self, sha256: &str) -> Result<Vec<u8>> {
        let path = self.component_path(sha256);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Removes the components `named` does not name (best effort).
    pub fn forget_unnamed(&self, named: impl Fn(&str) -> bool) {
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let path = entry.path();
            let unnamed = path.extension().is_some_and(|ext| ext == "wasm")
                && path
                    .file_stem()
                    .and_then(|stem| stem.to_str())
                    .is_some_and(|stem| is_sha256(stem) && !named(stem));
            if unnamed && let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "removing an adapter no longer kept failed");
            }
        }
    }

    fn component_path(&self, sha256: &str) -> PathBuf {
        self.0.join(format!("{sha256}.wasm"))
    }
}

impl std::fmt::Display for Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.join(RECORDS).display())
    }
}
