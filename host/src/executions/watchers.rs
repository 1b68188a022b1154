//! Who waits on which execution's ending: `SYNC` clients, polling waits and the
//! dispatcher's requests in flight. An ending is handed over with the execution's
//! terminal state, so a waiter does not read it back from the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

use super::Execution;

/// A receiver of one execution's terminal state (`None` until it ends).
pub(super) type Ending = watch::Receiver<Option<Arc<Execution>>>;

#[derive(Default)]
pub(super) struct Watchers(Mutex<HashMap<String, Watch>>);

struct Watch {
    ended: watch::Sender<Option<Arc<Execution>>>,
    /// made before this host's accept of the execution committed: the execution has
    /// not ended while the watch is kept (its ending takes the watch away), so a
    /// waiter need not read it first
    accepted: bool,
    /// this host's changes to the execution being written now: it tells its
    /// waiters of them itself, so endings heard meanwhile need no read
    writing: u32,
    /// an ending was heard while a change was written (another host's, maybe)
    missed: bool,
}

impl Watch {
    fn new(accepted: bool) -> Watch {
        Watch {
            ended: watch::channel(None).0,
            accepted,
            writing: 0,
            missed: false,
        }
    }

    /// A waiter's own watch that no waiter holds any more.
    fn unheld(&self) -> bool {
        !self.accepted && self.ended.receiver_count() == 0
    }
}

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watch>> {
        self.0.lock().expect("watchers poisoned")
    }

    /// Keeps a watch on an execution this host is accepting, until it ends. Made
    /// before the accept commits, under an id no one knows yet: every ending is
    /// told to it.
    pub(super) fn accepting(&self, id: &str) {
        self.lock().insert(id.to_string(), Watch::new(true));
    }

    /// Drops the watch of an execution whose accept wrote nothing.
    pub(super) fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// A receiver of `id`'s ending, and whether the execution is known not to have
    /// ended before it (else the caller reads it, after subscribing).
    pub(super) fn subscribe(&self, id: &str) -> (Ending, bool) {
        let mut watchers = self.lock();
        let watch = watchers
            .entry(id.to_string())
            .or_insert_with(|| Watch::new(false));
        (watch.ended.subscribe(), watch.accepted)
    }

    /// Drops the watch a waiter made on an execution that had already ended, once
    /// nobody else waits on it (no ending will come to clean it up).
    pub(super) fn forget_ended(&self, id: &str) {
        let mut watchers = self.lock();
        if watchers.get(id).is_some_and(Watch::unheld) {
            watchers.remove(id);
        }
    }

    /// Tells `execution`'s waiters of its new state: its ending, with the state, or
    /// nothing (a watch nobody holds any more is dropped).
    pub(super) fn changed(&self, execution: &Execution) {
        let mut watchers = self.lock();
        if execution.status.is_terminal() {
            if let Some(watch) = watchers.remove(&execution.id)
                && watch.ended.receiver_count() > 0
            {
                watch.ended.send_replace(Some(Arc::new(execution.clone())));
            }
        } else if watchers.get(&execution.id).is_some_and(Watch::unheld) {
            watchers.remove(&execution.id);
        }
    }

    /// Whether anyone here waits on `id`.
    #[cfg(test)]
    fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Marks a change to `id` this host starts to write, when someone waits on it;
    /// returns whether it marked one (to be passed to [`Watchers::written`]).
    pub(super) fn writing(&self, id: &str) -> bool {
        let mut watchers = self.lock();
        let Some(watch) = watchers.get_mut(id) else {
            return false;
        };
        watch.writing += 1;
        true
    }

    /// A change [`Watchers::writing`] marked is written (or failed): whether an
    /// ending heard meanwhile may not have been told, so that `id` must be read.
    pub(super) fn written(&self, id: &str) -> bool {
        let mut watchers = self.lock();
        let Some(watch) = watchers.get_mut(id).filter(|watch| watch.writing > 0) else {
            return false;
        };
        watch.writing -= 1;
        watch.writing == 0 && std::mem::take(&mut watch.missed)
    }

    /// An ending of `id` was heard (from the store's notifications): whether it
    /// must be read now to tell its waiters. Not while this host writes a change
    /// to it: the writer tells them (its own ending), or reads it once written.
    pub(super) fn heard_ending(&self, id: &str) -> bool {
        let mut watchers = self.lock();
        match watchers.get_mut(id) {
            None => false,
            Some(watch) if watch.writing > 0 => {
                watch.missed = true;
                false
            }
            Some(_) => true,
        }
    }

    /// The executions waited on here.
    pub(super) fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executions::Status;

    fn execution(id: &str, status: Status) -> Execution {
        let mut execution: Execution = serde_json::from_value(serde_json::json!({
            "id": id, "organization_id": "org_1", "model": "m", "status": "PENDING",
            "input": {}, "metadata": {}, "mode": "SYNC", "hold_amount": "0.01",
            "estimated_cost": "0.01", "created_at": "2026-12-05T10:00:00Z",
            "expires_at": "2026-12-05T11:00:00Z", "attempts": [], "transitions": [],
        }))
        .unwrap();
        execution.status = status;
        execution
    }

    #[tokio::test]
    async fn a_waiter_on_an_accepted_execution_hears_its_terminal_state_without_a_read() {
        let watchers = Watchers::default();
        watchers.accepting("exec_1");
        let (mut ending, accepted) = watchers.subscribe("exec_1");
        assert!(accepted, "an execution accepted here needs no read");
        watchers.changed(&execution("exec_1", Status::Processing));
        assert!(ending.borrow_and_update().is_none());
        watchers.changed(&execution("exec_1", Status::Completed));
        ending.changed().await.unwrap();
        let ended = ending.borrow().clone().expect("the terminal state");
        assert_eq!(ended.status, Status::Completed);
        assert!(!watchers.contains("exec_1"), "the ending takes the watch");
    }

    #[test]
    fn an_accepted_execution_s_watch_lasts_until_it_ends_even_with_no_waiter() {
        let watchers = Watchers::default();
        watchers.accepting("exec_1");
        watchers.changed(&execution("exec_1", Status::Processing));
        assert!(watchers.contains("exec_1"));
        watchers.changed(&execution("exec_1", Status::Failed));
        assert!(!watchers.contains("exec_1"));
        // An accept that wrote nothing leaves nothing behind.
        watchers.accepting("exec_2");
        watchers.forget("exec_2");
        assert!(watchers.ids().is_empty());
    }

    #[test]
    fn a_waiter_s_own_watch_asks_for_a_read_and_goes_when_nobody_holds_it() {
        let watchers = Watchers::default();
        let (ending, accepted) = watchers.subscribe("exec_1");
        assert!(!accepted, "not accepted here: it may have ended already");
        watchers.changed(&execution("exec_1", Status::Processing));
        assert!(watchers.contains("exec_1"), "held by its waiter");
        drop(ending);
        watchers.forget_ended("exec_1");
        assert!(!watchers.contains("exec_1"));
        let (ending, _) = watchers.subscribe("exec_2");
        drop(ending);
        watchers.changed(&execution("exec_2", Status::Processing));
        assert!(!watchers.contains("exec_2"));
    }

    #[test]
    fn an_ending_heard_while_this_host_writes_is_read_only_if_the_write_did_not_end_it() {
        let watchers = Watchers::default();
        assert!(!watchers.heard_ending("exec_1"), "nobody waits: no read");
        assert!(!watchers.writing("exec_1"), "nothing to mark");
        watchers.accepting("exec_1");
        assert!(
            watchers.heard_ending("exec_1"),
            "waited on, not written: read"
        );
        // This host's own ending, heard before its writer tells the waiters.
        assert!(watchers.writing("exec_1"));
        assert!(!watchers.heard_ending("exec_1"));
        watchers.changed(&execution("exec_1", Status::Completed));
        assert!(!watchers.written("exec_1"), "the writer told them");
        // Another host's ending heard while a change that did not end it (or
        // failed) was written here: read once the last write is done.
        watchers.accepting("exec_2");
        assert!(watchers.writing("exec_2"));
        assert!(watchers.writing("exec_2"));
        assert!(!watchers.heard_ending("exec_2"));
        assert!(
            !watchers.written("exec_2"),
            "another write is still running"
        );
        assert!(
            watchers.written("exec_2"),
            "the ending may not have been told"
        );
        assert!(!watchers.written("exec_2"), "told once");
        assert!(watchers.heard_ending("exec_2"), "no write: read at once");
    }
}
