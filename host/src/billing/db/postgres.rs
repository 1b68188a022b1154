//! Balances and the ledger on PostgreSQL: `accounts` and `ledger_entries`, every
//! field a column.

use anyhow::Result;
use chrono::{DateTime, Utc};
use postgres::Row;
use std::ops::ControlFlow;
use uuid::Uuid;

use super::super::{Account, Entry};
use crate::money::Micros;
use crate::store::postgres::{from_bigint, label, parse_label, to_bigint, walk};
use crate::store::{Page, Session};

/// The key of an organization's account among the rows a batch keeps.
fn kept_account(org_id: &str) -> String {
    format!("accounts/{org_id}")
}

/// An organization's account. In a write, the batch reads it once (and locks it)
/// and keeps it until the commit: accepts in one batch update one account in
/// memory, and it is written once ([`put_account`]).
pub fn account(pg: &Session, org_id: &str) -> Result<Account> {
    if let Some((_, account)) = pg.kept::<(String, Account)>(&kept_account(org_id)) {
        return Ok(account);
    }
    let sql = format!(
        "SELECT deposits, available, held, spent FROM accounts WHERE organization_id = $1{}",
        pg.for_update()
    );
    let Some(row) = pg.query_opt(&sql, &[&org_id])? else {
        return Ok(Account::default());
    };
    Ok(Account {
        deposits: Micros(from_bigint(row.get(0))?),
        available: Micros(from_bigint(row.get(1))?),
        held: Micros(from_bigint(row.get(2))?),
        spent: Micros(from_bigint(row.get(3))?),
    })
}

pub fn total_held(pg: &Session) -> Result<Micros> {
    let row = pg
        .query_opt("SELECT COALESCE(sum(held), 0)::bigint FROM accounts", &[])?
        .expect("an aggregate has a row");
    Ok(Micros(from_bigint(row.get(0))?))
}

pub fn put_account(pg: &Session, org_id: &str, account: &Account) -> Result<()> {
    pg.keep(
        kept_account(org_id),
        (org_id.to_string(), *account),
        write_account,
    )
}

fn write_account(pg: &Session, (org_id, account): &(String, Account)) -> Result<()> {
    pg.execute(
        "INSERT INTO accounts (organization_id, deposits, available, held, spent) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (organization_id) DO UPDATE SET \
         deposits = EXCLUDED.deposits, available = EXCLUDED.available, \
         held = EXCLUDED.held, spent = EXCLUDED.spent",
        &[
            org_id,
            &to_bigint(account.deposits.0)?,
            &to_bigint(account.available.0)?,
            &to_bigint(account.held.0)?,
            &to_bigint(account.spent.0)?,
        ],
    )?;
    Ok(())
}

/// Appends an entry when the batch commits, with the batch's others.
pub fn append_entry(pg: &Session, uuid: Uuid, entry: &Entry) -> Result<()> {
    pg.append("ledger_entries", (uuid, entry.clone()), write_entries)
}

/// Inserts entries in one statement, a column an array.
fn write_entries(pg: &Session, entries: &[(Uuid, Entry)]) -> Result<()> {
    let ids: Vec<&str> = entries.iter().map(|(_, e)| e.id.as_str()).collect();
    let seqs: Vec<Uuid> = entries.iter().map(|(uuid, _)| *uuid).collect();
    let orgs: Vec<&str> = entries
        .iter()
        .map(|(_, e)| e.organization_id.as_str())
        .collect();
    let execution_ids: Vec<Option<&str>> = entries
        .iter()
        .map(|(_, e)| e.execution_id.as_deref())
        .collect();
    let memos: Vec<Option<&str>> = entries.iter().map(|(_, e)| e.memo.as_deref()).collect();
    let created: Vec<DateTime<Utc>> = entries.iter().map(|(_, e)| e.created_at).collect();
    let mut kinds = Vec::with_capacity(entries.len());
    let mut amounts = Vec::with_capacity(entries.len());
    let mut debits = Vec::with_capacity(entries.len());
    let mut credits = Vec::with_capacity(entries.len());
    for (_, entry) in entries {
        kinds.push(label(&entry.kind)?);
        amounts.push(to_bigint(entry.amount.0)?);
        debits.push(label(&entry.debit)?);
        credits.push(label(&entry.credit)?);
    }
    pg.execute(
        "INSERT INTO ledger_entries (id, seq, organization_id, kind, amount, debit, credit, \
         execution_id, memo, created_at) \
         SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], \
         $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[])",
        &[
            &ids,
            &seqs,
            &orgs,
            &kinds,
            &amounts,
            &debits,
            &credits,
            &execution_ids,
            &memos,
            &created,
        ],
    )?;
    Ok(())
}

/// An entry's columns, in the order [`entry`] reads them.
const ENTRY: &str =
    "id, organization_id, kind, amount, debit, credit, execution_id, memo, created_at";

fn entry(row: &Row) -> Result<Entry> {
    Ok(Entry {
        id: row.get(0),
        organization_id: row.get(1),
        kind: parse_label(row.get(2))?,
        amount: Micros(from_bigint(row.get(3))?),
        debit: parse_label(row.get(4))?,
        credit: parse_label(row.get(5))?,
        execution_id: row.get(6),
        memo: row.get(7),
        created_at: row.get(8),
    })
}

pub fn entries_newest_first(
    pg: &Session,
    org_id: &str,
    before: Option<Uuid>,
    limit: usize,
    keep: impl Fn(&Entry) -> bool,
) -> Result<Option<(Vec<Entry>, bool)>> {
    if let Some(before) = before {
        let known = pg.query_opt(
            "SELECT 1 FROM ledger_entries WHERE organization_id = $1 AND seq = $2",
            &[&org_id, &before],
        )?;
        if known.is_none() {
            return Ok(None);
        }
    }
    let first = format!(
        "SELECT {ENTRY}, seq FROM ledger_entries WHERE organization_id = $1 \
         ORDER BY seq DESC LIMIT $2"
    );
    let next = format!(
        "SELECT {ENTRY}, seq FROM ledger_entries WHERE organization_id = $1 AND seq < $2 \
         ORDER BY seq DESC LIMIT $3"
    );
    let mut page = Page::new(limit);
    walk(
        before,
        |row| row.get::<_, Uuid>(9),
        |before, chunk| match before {
            None => pg.query(&first, &[&org_id, &chunk]),
            Some(before) => pg.query(&next, &[&org_id, before, &chunk]),
        },
        |row| {
            let entry = entry(row)?;
            Ok(if keep(&entry) {
                page.offer(entry)
            } else {
                ControlFlow::Continue(())
            })
        },
    )?;
    Ok(Some(page.finish()))
}

pub fn each_entry(pg: &Session, mut f: impl FnMut(Entry) -> Result<()>) -> Result<()> {
    for row in pg.query(
        &format!("SELECT {ENTRY} FROM ledger_entries ORDER BY organization_id, seq"),
        &[],
    )? {
        f(entry(&row)?)?;
    }
    Ok(())
}
