//! The set of active plugin versions, swapped atomically.

use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::LoadedPlugin;

/// Active plugins by manifest name. Readers take a snapshot without locking; an
/// in-flight attempt keeps the `Arc` of the version it started with.
#[derive(Default)]
pub struct Registry {
    active: ArcSwap<BTreeMap<String, Arc<LoadedPlugin>>>,
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.active.load().get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<LoadedPlugin>> {
        self.active.load().values().cloned().collect()
    }

    /// Makes `plugin` the active version of its name; returns the one it replaced.
    pub fn activate(&self, plugin: Arc<LoadedPlugin>) -> Option<Arc<LoadedPlugin>> {
        let mut replaced = None;
        self.active.rcu(|current| {
            let mut next = BTreeMap::clone(current);
            replaced = next.insert(plugin.name.clone(), plugin.clone());
            next
        });
        replaced
    }
}
