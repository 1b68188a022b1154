//! Writes a PostgreSQL batch keeps in the writer until just before its commit, to
//! spare round trips (each costs more than the statement itself; see the README's
//! *Performance*): a row the batch changes again and again (an organization's
//! account, once per accept) is read once and written once, and appended rows
//! (ledger entries) go to the database in one statement per table. What the batch
//! kept it reads back from here; nothing outside the batch sees any of it before
//! the commit, kept or not, and a batch that fails forgets it with the rest.
//!
//! A read many of the batch's writes make and few change (an organization's
//! webhook endpoints, once per lifecycle event) is remembered for the rest of the
//! batch: the batch then reads those rows as of its first read of them, as a
//! `REPEATABLE READ` transaction would, and a write of them in the batch makes
//! the next read read again.

use anyhow::Result;
use std::any::Any;
use std::collections::{BTreeMap, HashMap};

use super::postgres::Session;

/// One batch's kept rows and appends.
#[derive(Default)]
pub struct Deferred {
    /// The latest value of each kept row, by key; written in key order.
    rows: BTreeMap<String, Box<dyn Pending>>,
    /// The rows appended to each table, in the order they came.
    appends: BTreeMap<&'static str, Box<dyn Pending>>,
    /// What reads of the batch answered, by key.
    remembered: HashMap<String, Box<dyn Any + Send>>,
}

/// Something to write before the commit, of a type only its writer knows.
pub trait Pending: Send {
    fn write(&self, pg: &Session) -> Result<()>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

struct Kept<T> {
    value: T,
    write: fn(&Session, &T) -> Result<()>,
}

impl<T: Send + 'static> Pending for Kept<T> {
    fn write(&self, pg: &Session) -> Result<()> {
        (self.write)(pg, &self.value)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

struct Appended<T> {
    values: Vec<T>,
    write: fn(&Session, &[T]) -> Result<()>,
}

impl<T: Send + 'static> Pending for Appended<T> {
    fn write(&self, pg: &Session) -> Result<()> {
        (self.write)(pg, &self.values)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Deferred {
    /// Keeps `value` as the row `key`'s, to be written by `write` before the commit.
    pub fn keep<T: Send + 'static>(
        &mut self,
        key: String,
        value: T,
        write: fn(&Session, &T) -> Result<()>,
    ) {
        self.rows.insert(key, Box::new(Kept { value, write }));
    }

    /// The value this batch kept for the row `key`, if any. Asking for another type
    /// than the row was kept as is a bug, and panics: answering `None` would read
    /// the row's value from before the batch and lose the batch's changes.
    pub fn kept<T: Clone + 'static>(&self, key: &str) -> Option<T> {
        let kept = self.rows.get(key)?.as_any().downcast_ref::<Kept<T>>();
        Some(
            kept.expect("a kept row is read as the type it was kept as")
                .value
                .clone(),
        )
    }

    /// Appends `value` to `table`'s rows, all written by one call of `write`.
    pub fn append<T: Send + 'static>(
        &mut self,
        table: &'static str,
        value: T,
        write: fn(&Session, &[T]) -> Result<()>,
    ) {
        let pending = self.appends.entry(table).or_insert_with(|| {
            Box::new(Appended::<T> {
                values: Vec::new(),
                write,
            })
        });
        pending
            .as_any_mut()
            .downcast_mut::<Appended<T>>()
            .expect("one type of row per table")
            .values
            .push(value);
    }

    /// What the batch's read `key` answered, if it was remembered. Asking for
    /// another type than it was remembered as is a bug, and panics.
    pub fn remembered<T: Clone + 'static>(&self, key: &str) -> Option<T> {
        let remembered = self.remembered.get(key)?.downcast_ref::<T>();
        Some(
            remembered
                .expect("a read is remembered as the type it is asked for")
                .clone(),
        )
    }

    /// Remembers what the read `key` answered, for the rest of the batch.
    pub fn remember<T: Send + 'static>(&mut self, key: String, value: T) {
        self.remembered.insert(key, Box::new(value));
    }

    /// The batch wrote what the read `key` reads: the next read reads it again.
    pub fn forget(&mut self, key: &str) {
        self.remembered.remove(key);
    }

    /// Everything to write, kept rows first, leaving this empty (and forgetting
    /// every remembered read).
    pub fn take(&mut self) -> Vec<Box<dyn Pending>> {
        self.remembered.clear();
        let rows = std::mem::take(&mut self.rows).into_values();
        let appends = std::mem::take(&mut self.appends).into_values();
        rows.chain(appends).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nothing<T>(_: &Session, _: &T) -> Result<()> {
        Ok(())
    }

    fn nothing_all<T>(_: &Session, _: &[T]) -> Result<()> {
        Ok(())
    }

    #[test]
    fn a_kept_row_reads_back_its_latest_value_and_is_written_once() {
        let mut deferred = Deferred::default();
        assert_eq!(deferred.kept::<u64>("accounts/org_1"), None);
        deferred.keep("accounts/org_1".into(), 5u64, nothing);
        deferred.keep("accounts/org_1".into(), 7u64, nothing);
        assert_eq!(deferred.kept::<u64>("accounts/org_1"), Some(7));
        deferred.append("ledger_entries", 1u8, nothing_all);
        deferred.append("ledger_entries", 2u8, nothing_all);
        let pending = deferred.take();
        assert_eq!(pending.len(), 2, "one kept row and one table of appends");
        let appended = pending[1].as_any().downcast_ref::<Appended<u8>>().unwrap();
        assert_eq!(appended.values, [1, 2]);
        assert!(deferred.take().is_empty());
        assert_eq!(deferred.kept::<u64>("accounts/org_1"), None);
    }

    #[test]
    fn a_remembered_read_lasts_until_a_write_of_it_or_the_batch_s_end() {
        let mut deferred = Deferred::default();
        assert_eq!(
            deferred.remembered::<Vec<u8>>("webhook_endpoints/org_1"),
            None
        );
        deferred.remember("webhook_endpoints/org_1".into(), vec![1u8]);
        assert_eq!(
            deferred.remembered::<Vec<u8>>("webhook_endpoints/org_1"),
            Some(vec![1])
        );
        assert_eq!(
            deferred.remembered::<Vec<u8>>("webhook_endpoints/org_2"),
            None
        );
        deferred.forget("webhook_endpoints/org_1");
        assert_eq!(
            deferred.remembered::<Vec<u8>>("webhook_endpoints/org_1"),
            None
        );
        deferred.remember("webhook_endpoints/org_1".into(), vec![2u8]);
        assert!(deferred.take().is_empty(), "nothing to write");
        assert_eq!(
            deferred.remembered::<Vec<u8>>("webhook_endpoints/org_1"),
            None
        );
    }

    /// Regression: the billing code kept an account as `(org, Account)` and read it
    /// as `Account`; the miss read the account from before the batch, and a batch
    /// with a hold and its settlement left the hold in place.
    #[test]
    #[should_panic(expected = "a kept row is read as the type it was kept as")]
    fn reading_a_kept_row_as_another_type_is_refused_not_a_miss() {
        let mut deferred = Deferred::default();
        deferred.keep(
            "accounts/org_1".into(),
            ("org_1".to_string(), 5u64),
            nothing,
        );
        deferred.kept::<u64>("accounts/org_1");
    }
}
