//! The plugins directory: every component in it loaded at start-up, and watched for
//! new or changed ones, which are swapped in like installs.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Registry;
use super::loaded::LoadedPlugin;
use super::runtime::Runtime;

/// Loads every `*.wasm` in `dir`, in name order.
fn load_dir(runtime: &Arc<Runtime>, dir: &Path) -> Result<Vec<Arc<LoadedPlugin>>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "reading plugins from {} (run `make plugins`)",
                dir.display()
            )
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| runtime.load_validated(&std::fs::read(path)?))
        .zip(&paths)
        .map(|(loaded, path): (Result<Arc<LoadedPlugin>>, _)| {
            loaded.with_context(|| format!("loading plugin {}", path.display()))
        })
        .collect()
}

/// Start-up: every component in `dir`, then the versions swapped in at runtime
/// before the restart (see [`Installed`]). A kept version wins over the file of
/// the same adapter in `dir`, unless that file changed since it was kept: then the
/// file is swapped in over it, as the watcher would have done had the server run.
pub fn load_all(runtime: &Arc<Runtime>, registry: &Registry, dir: &Path) -> Result<()> {
    for plugin in load_dir(runtime, dir)? {
        registry
            .check_agreement(&plugin)
            .with_context(|| format!("loading plugin {}", plugin.name))?;
        tracing::info!(plugin = %plugin.name, version = %plugin.version, sha256 = %plugin.sha256, "plugin loaded");
        if let Some(installed) = registry.installed() {
            installed.saw_in_plugins_dir(&plugin.name, &plugin.sha256);
        }
        registry.restore(plugin, None);
    }
    let Some(installed) = registry.installed() else {
        return Ok(());
    };
    for kept in installed.load(runtime)? {
        let file = registry.get(&kept.name);
        tracing::info!(plugin = %kept.name, version = %kept.active.version, sha256 = %kept.active.sha256, "plugin restored as swapped in at runtime");
        registry.restore(kept.active.clone(), kept.previous);
        if let Some(file) = file
            && file.sha256 != kept.active.sha256
            && Some(&file.sha256) != kept.plugins_dir.as_ref()
        {
            tracing::info!(plugin = %file.name, version = %file.version, sha256 = %file.sha256, "plugin file changed while the server was stopped: swapped in");
            registry.activate(file)?;
        }
    }
    Ok(())
}

/// How often the plugins directory is looked at for new or changed components.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Watches `dir`: a `*.wasm` file that appears or changes is loaded, validated and
/// swapped in like an install through the admin API (the replaced version is kept
/// for rollback). A file that does not load is logged and left alone.
pub fn watch_dir(runtime: Arc<Runtime>, registry: Arc<Registry>, dir: PathBuf) {
    type Seen = std::collections::HashMap<PathBuf, (std::time::SystemTime, u64)>;
    fn scan(dir: &Path) -> Seen {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                if path.extension()? != "wasm" {
                    return None;
                }
                let meta = std::fs::metadata(&path).ok()?;
                Some((path, (meta.modified().ok()?, meta.len())))
            })
            .collect()
    }
    tokio::spawn(async move {
        let mut seen = scan(&dir);
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let now = scan(&dir);
            for (path, stamp) in &now {
                if seen.get(path) == Some(stamp) {
                    continue;
                }
                let (runtime, registry) = (runtime.clone(), registry.clone());
                let file = path.clone();
                let swapped = tokio::task::spawn_blocking(move || {
                    let plugin = runtime.load_validated(&std::fs::read(&file)?)?;
                    if let Some(installed) = registry.installed() {
                        installed.saw_in_plugins_dir(&plugin.name, &plugin.sha256);
                    }
                    if registry
                        .get(&plugin.name)
                        .is_some_and(|p| p.sha256 == plugin.sha256)
                    {
                        return Ok(None);
                    }
                    registry.activate(plugin.clone())?;
                    Ok::<_, anyhow::Error>(Some(plugin))
                })
                .await;
                match swapped {
                    Ok(Ok(None)) => {}
                    Ok(Ok(Some(plugin))) => {
                        tracing::info!(plugin = %plugin.name, version = %plugin.version, sha256 = %plugin.sha256, path = %path.display(), "plugin changed on disk: swapped in");
                    }
                    Ok(Err(error)) => {
                        tracing::error!(path = %path.display(), error = format!("{error:#}"), "plugin on disk not swapped in")
                    }
                    Err(error) => {
                        tracing::error!(path = %path.display(), %error, "plugin load task failed")
                    }
                }
            }
            seen = now;
        }
    });
}
