//! Where balances and ledger entries are kept: the only code that knows their tables
//! (redb here, PostgreSQL in [`postgres`]).

use anyhow::Result;
use redb::ReadableTable;
use uuid::Uuid;

use super::{Account, Entry};
use crate::money::Micros;
use crate::store::{self, Reader, Txn};

mod postgres;

store::table!(ACCOUNTS = "accounts");
store::table! {
    /// `{org}/{UUID v7}` → ledger entry (time-ordered within an organization)
    LEDGER = "ledger"
}

/// The organization's balances (all zero before its first entry).
pub fn account(reader: &impl Reader, org_id: &str) -> Result<Account> {
    if let Some(pg) = reader.postgres() {
        return postgres::account(pg, org_id);
    }
    Ok(store::get(&reader.open_table(ACCOUNTS)?, org_id)?.unwrap_or_default())
}

/// The sum of every account's held money.
pub fn total_held(reader: &impl Reader) -> Result<Micros> {
    if let Some(pg) = reader.postgres() {
        return postgres::total_held(pg);
    }
    let mut held = 0u64;
    for row in reader.open_table(ACCOUNTS)?.iter()? {
        let (_, value) = row?;
        let account: Account = store::decode(value.value())?;
        held = held.saturating_add(account.held.0);
    }
    Ok(Micros(held))
}

pub fn put_account(txn: &Txn, org_id: &str, account: &Account) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::put_account(pg, org_id, account);
    }
    txn.open_table(ACCOUNTS)?
        .insert(org_id, store::encode(account)?.as_slice())?;
    Ok(())
}

/// Appends an entry; `uuid` (v7, time-ordered) orders it within its organization.
pub fn append_entry(txn: &Txn, uuid: Uuid, entry: &Entry) -> Result<()> {
    if let Some(pg) = txn.postgres() {
        return postgres::append_entry(pg, uuid, entry);
    }
    txn.open_table(LEDGER)?.insert(
        format!("{}/{uuid}", entry.organization_id).as_str(),
        store::encode(entry)?.as_slice(),
    )?;
    Ok(())
}

/// Up to `limit` of the organization's entries that `keep` accepts, newest first,
/// older than the entry `before` when given, and whether more follow. `None` when
/// `before` is not one of the organization's entries.
pub fn entries_newest_first(
    reader: &impl Reader,
    org_id: &str,
    before: Option<Uuid>,
    limit: usize,
    keep: impl Fn(&Entry) -> bool,
) -> Result<Option<(Vec<Entry>, bool)>> {
    if let Some(pg) = reader.postgres() {
        return postgres::entries_newest_first(pg, org_id, before, limit, keep);
    }
    let prefix = format!("{org_id}/");
    let table = reader.open_table(LEDGER)?;
    // Keys are `{org}/{uuid}`: the organization's range ends just before `{org}0`.
    let end = match before {
        None => format!("{org_id}0"),
        Some(uuid) => {
            let key = format!("{prefix}{uuid}");
            if table.get(key.as_str())?.is_none() {
                return Ok(None);
            }
            key
        }
    };
    let mut page = store::Page::new(limit);
    for row in table.range(prefix.as_str()..end.as_str())?.rev() {
        let (_, value) = row?;
        let entry: Entry = store::decode(value.value())?;
        if keep(&entry) && page.offer(entry).is_break() {
            break;
        }
    }
    Ok(Some(page.finish()))
}

/// Calls `f` with every entry of every organization.
pub fn each_entry(reader: &impl Reader, mut f: impl FnMut(Entry) -> Result<()>) -> Result<()> {
    if let Some(pg) = reader.postgres() {
        return postgres::each_entry(pg, f);
    }
    for row in reader.open_table(LEDGER)?.iter()? {
        let (_, value) = row?;
        f(store::decode(value.value())?)?;
    }
    Ok(())
}
