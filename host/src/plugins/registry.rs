//! The set of active plugin versions, swapped atomically.

use anyhow::Result;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{Installed, LoadedPlugin, catalogue};

/// Active plugins by manifest name. Readers take a snapshot without locking; an
/// in-flight attempt keeps the `Arc` of the version it started with, so a replaced
/// version drains as its last attempt ends. The version each swap replaced is kept
/// for rollback. With an [`Installed`] store, every swap and rollback is written
/// to it before it takes effect, so a restart restores it.
#[derive(Default)]
pub struct Registry {
    active: ArcSwap<BTreeMap<String, Arc<LoadedPlugin>>>,
    previous: Mutex<BTreeMap<String, Arc<LoadedPlugin>>>,
    /// serializes swaps and rollbacks, so `previous` (and what `installed` holds)
    /// always matches `active`
    swapping: Mutex<()>,
    installed: Option<Installed>,
}

impl Registry {
    /// A registry whose swaps are kept in `installed`.
    pub fn persistent(installed: Installed) -> Registry {
        Registry {
            installed: Some(installed),
            ..Registry::default()
        }
    }

    pub fn installed(&self) -> Option<&Installed> {
        self.installed.as_ref()
    }

    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.active.load().get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<LoadedPlugin>> {
        self.active.load().values().cloned().collect()
    }

    /// Refuses `plugin` when it would make the catalogue disagree with itself
    /// (see [`catalogue::check_agreement`]).
    pub fn check_agreement(&self, plugin: &LoadedPlugin) -> Result<()> {
        let active = self.active.load();
        catalogue::check_agreement(plugin, active.values().map(|other| &**other))
    }

    /// The version a rollback of `name` would restore.
    pub fn previous(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.previous
            .lock()
            .expect("registry poisoned")
            .get(name)
            .cloned()
    }

    /// At start-up: makes `plugin` active with `previous` as its rollback target,
    /// writing nothing (it is what the plugins directory or the store holds).
    pub fn restore(&self, plugin: Arc<LoadedPlugin>, previous: Option<Arc<LoadedPlugin>>) {
        let _swap = self.swapping.lock().expect("registry poisoned");
        let mut rollback = self.previous.lock().expect("registry poisoned");
        match previous {
            Some(previous) => rollback.insert(plugin.name.clone(), previous),
            None => rollback.remove(&plugin.name),
        };
        self.swap(plugin);
    }

    /// Makes `plugin`, a version another host swapped in, active here with
    /// `previous` as its rollback target, unless a version with its digest already
    /// is, or it is no longer the one the hosts run (`still_current`). Both are
    /// checked under the swap lock, after the slow load: this host hears its own
    /// swaps announced too, and replacing the version it swapped in with a copy
    /// would reset its trap count (which decides an automatic rollback); and a
    /// swap made while the load ran must not be undone by a stale one. Returns
    /// whether it swapped.
    pub fn follow(
        &self,
        plugin: Arc<LoadedPlugin>,
        previous: Option<Arc<LoadedPlugin>>,
        still_current: impl FnOnce() -> bool,
    ) -> bool {
        let _swap = self.swapping.lock().expect("registry poisoned");
        let active = self.get(&plugin.name);
        if active.is_some_and(|active| active.sha256 == plugin.sha256) || !still_current() {
            return false;
        }
        let mut rollback = self.previous.lock().expect("registry poisoned");
        match previous {
            Some(previous) => rollback.insert(plugin.name.clone(), previous),
            None => rollback.remove(&plugin.name),
        };
        self.swap(plugin);
        true
    }

    /// Makes `plugin` the active version of its name; returns the one it replaced,
    /// which becomes the rollback target. Blocks while the swap is written; when
    /// that fails, nothing changes.
    pub fn activate(&self, plugin: Arc<LoadedPlugin>) -> Result<Option<Arc<LoadedPlugin>>> {
        let _swap = self.swapping.lock().expect("registry poisoned");
        self.check_agreement(&plugin)?;
        let replaced = self.get(&plugin.name);
        if let Some(installed) = &self.installed {
            installed.save(&plugin, replaced.as_deref())?;
        }
        self.swap(plugin);
        if let Some(replaced) = &replaced {
            self.previous
                .lock()
                .expect("registry poisoned")
                .insert(replaced.name.clone(), replaced.clone());
        }
        Ok(replaced)
    }

    /// Restores the version the last swap of `name` replaced (the replaced one
    /// becomes the rollback target in turn). Returns the now active version, or
    /// `None` when there is nothing to roll back to. Written like a swap.
    pub fn rollback(&self, name: &str) -> Result<Option<Arc<LoadedPlugin>>> {
        let _swap = self.swapping.lock().expect("registry poisoned");
        let Some(restored) = self.previous(name) else {
            return Ok(None);
        };
        self.check_agreement(&restored)?;
        let replaced = self.get(name);
        if let Some(installed) = &self.installed {
            installed.save(&restored, replaced.as_deref())?;
        }
        self.swap(restored.clone());
        let mut rollback = self.previous.lock().expect("registry poisoned");
        match replaced {
            Some(replaced) => rollback.insert(name.to_string(), replaced),
            None => rollback.remove(name),
        };
        Ok(Some(restored))
    }

    /// Rolls back every swapped-in version that has trapped `threshold` times or
    /// more; returns the names rolled back.
    pub fn roll_back_trapping(&self, threshold: u64) -> Vec<String> {
        let trapping: Vec<String> = self
            .all()
            .into_iter()
            .filter(|plugin| plugin.traps() >= threshold && self.previous(&plugin.name).is_some())
            .map(|plugin| plugin.name.clone())
            .collect();
        let mut rolled_back = Vec::new();
        for name in trapping {
            match self.rollback(&name) {
                Ok(Some(restored)) => {
                    tracing::warn!(plugin = %name, version = %restored.version, sha256 = %restored.sha256, threshold, "a swapped-in version kept trapping: rolled back");
                    rolled_back.push(name);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(plugin = %name, error = format!("{error:#}"), "a swapped-in version keeps trapping, and rolling it back failed")
                }
            }
        }
        rolled_back
    }

    fn swap(&self, plugin: Arc<LoadedPlugin>) {
        self.active.rcu(|current| {
            let mut next = BTreeMap::clone(current);
            next.insert(plugin.name.clone(), plugin.clone());
            next
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::PluginLimits;
    use crate::plugins::tests::{load, runtime};
    use std::sync::atomic::Ordering;

    /// Regressions (CI failures on PostgreSQL): the host heard its own install
    /// announced, loaded the same version again and swapped the copy in while
    /// the version it had installed was already trapping, so the trap count that
    /// triggers the automatic rollback started over and the rollback never came;
    /// and a version loaded for an announcement overwrote a newer swap made while
    /// it loaded, so a rollback went back to the wrong version.
    #[tokio::test]
    async fn following_a_version_already_active_keeps_it_and_its_traps() {
        let runtime = runtime(PluginLimits::default());
        let registry = Registry::default();
        let installed = load(&runtime, "plugins/dist/openai.wasm").await;
        registry.restore(installed.clone(), None);
        installed.traps.fetch_add(2, Ordering::Relaxed);

        let announced = load(&runtime, "plugins/dist/openai.wasm").await;
        assert!(!registry.follow(announced, None, || true));
        let active = registry.get(&installed.name).unwrap();
        assert!(Arc::ptr_eq(&active, &installed));
        assert_eq!(active.traps(), 2);

        let other = load(&runtime, "plugins/dist/fal.wasm").await;
        assert!(
            !registry.follow(other.clone(), None, || false),
            "a stale version"
        );
        assert!(registry.get(&other.name).is_none());
        assert!(registry.follow(other.clone(), Some(installed.clone()), || true));
        assert!(Arc::ptr_eq(&registry.get(&other.name).unwrap(), &other));
        assert!(Arc::ptr_eq(
            &registry.previous(&other.name).unwrap(),
            &installed
        ));
    }
}
