//! The set of active plugin versions, swapped atomically.

use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::LoadedPlugin;

/// Active plugins by manifest name. Readers take a snapshot without locking; an
/// in-flight attempt keeps the `Arc` of the version it started with, so a replaced
/// version drains as its last attempt ends. The version each swap replaced is kept
/// for rollback.
#[derive(Default)]
pub struct Registry {
    active: ArcSwap<BTreeMap<String, Arc<LoadedPlugin>>>,
    previous: Mutex<BTreeMap<String, Arc<LoadedPlugin>>>,
    /// serializes swaps and rollbacks, so `previous` always matches `active`
    swapping: Mutex<()>,
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.active.load().get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<LoadedPlugin>> {
        self.active.load().values().cloned().collect()
    }

    /// The version a rollback of `name` would restore.
    pub fn previous(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.previous
            .lock()
            .expect("registry poisoned")
            .get(name)
            .cloned()
    }

    /// Makes `plugin` the active version of its name; returns the one it replaced,
    /// which becomes the rollback target.
    pub fn activate(&self, plugin: Arc<LoadedPlugin>) -> Option<Arc<LoadedPlugin>> {
        let _swap = self.swapping.lock().expect("registry poisoned");
        let replaced = self.swap(plugin);
        if let Some(replaced) = &replaced {
            self.previous
                .lock()
                .expect("registry poisoned")
                .insert(replaced.name.clone(), replaced.clone());
        }
        replaced
    }

    /// Restores the version the last swap of `name` replaced (the replaced one
    /// becomes the rollback target in turn). Returns the now active version.
    pub fn rollback(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        let _swap = self.swapping.lock().expect("registry poisoned");
        let restored = self
            .previous
            .lock()
            .expect("registry poisoned")
            .remove(name)?;
        if let Some(replaced) = self.swap(restored.clone()) {
            self.previous
                .lock()
                .expect("registry poisoned")
                .insert(name.to_string(), replaced);
        }
        Some(restored)
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
        for name in &trapping {
            if let Some(restored) = self.rollback(name) {
                tracing::warn!(plugin = %name, version = %restored.version, sha256 = %restored.sha256, threshold, "a swapped-in version kept trapping: rolled back");
            }
        }
        trapping
    }

    fn swap(&self, plugin: Arc<LoadedPlugin>) -> Option<Arc<LoadedPlugin>> {
        let mut replaced = None;
        self.active.rcu(|current| {
            let mut next = BTreeMap::clone(current);
            replaced = next.insert(plugin.name.clone(), plugin.clone());
            next
        });
        replaced
    }
}
