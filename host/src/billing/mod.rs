//! Prepaid balances as a double-entry ledger (SPEC §7).
//!
//! Every movement is one entry moving an amount from one account to another:
//! `external → available` (deposit), `available → held` (hold),
//! `held → spent` (settle), `held → available` (release). So at every instant
//! deposits = available + held + spent. All functions run inside the caller's write
//! transaction, next to the state change that causes them.

mod db;

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::money::Micros;
use crate::store::{Reader, Store, Txn};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub deposits: Micros,
    pub available: Micros,
    pub held: Micros,
    pub spent: Micros,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    External,
    Available,
    Held,
    Spent,
    /// the platform's own loss account: what it absorbed above a hold
    PlatformLoss,
    /// what the platform owes providers
    ProviderPayable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Deposit,
    Hold,
    Settle,
    Release,
    /// the actual cost exceeded the hold; the platform pays the difference
    Absorbed,
}

/// A ledger entry, as `GET /v1/ledger` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = LedgerEntry)]
pub struct Entry {
    pub id: String,
    pub organization_id: String,
    pub kind: EntryKind,
    pub amount: Micros,
    pub debit: Bucket,
    pub credit: Bucket,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// who and why, for operator credits
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// An organization's balance as clients see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Balance)]
pub struct BalanceView {
    pub available: Micros,
    pub held: Micros,
    /// always `USD`
    pub currency: &'static str,
}

impl Account {
    /// What `GET /v1/balance` answers.
    pub fn view(&self) -> BalanceView {
        BalanceView {
            available: self.available,
            held: self.held,
            currency: "USD",
        }
    }

    fn bucket(&mut self, bucket: Bucket) -> &mut Micros {
        match bucket {
            Bucket::External => &mut self.deposits,
            Bucket::Available => &mut self.available,
            Bucket::Held => &mut self.held,
            Bucket::Spent => &mut self.spent,
            Bucket::PlatformLoss | Bucket::ProviderPayable => {
                unreachable!("platform buckets are not an organization's")
            }
        }
    }

    /// Entries between the platform's own accounts leave the organization's alone.
    fn touches(bucket: Bucket) -> bool {
        !matches!(bucket, Bucket::PlatformLoss | Bucket::ProviderPayable)
    }

    /// Moves `amount` from `debit` to `credit`; the external account only ever counts
    /// up (it is the total deposited). `None` when a bucket would go negative.
    fn apply(&mut self, debit: Bucket, credit: Bucket, amount: Micros) -> Option<()> {
        if !Self::touches(debit) && !Self::touches(credit) {
            return Some(());
        }
        let from = self.bucket(debit);
        *from = if debit == Bucket::External {
            Micros(from.0.checked_add(amount.0)?)
        } else {
            Micros(from.0.checked_sub(amount.0)?)
        };
        let to = self.bucket(credit);
        *to = Micros(to.0.checked_add(amount.0)?);
        Some(())
    }
}

pub fn account(reader: &impl Reader, org_id: &str) -> Result<Account> {
    db::account(reader, org_id)
}

/// Money held over all organizations (one read of every account: for a scrape, not
/// for a request).
pub fn total_held(reader: &impl Reader) -> Result<Micros> {
    db::total_held(reader)
}

/// The result of asking for a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldResult {
    Placed,
    InsufficientBalance { available: Micros },
}

/// Moves `amount` from `debit` to `credit` and records the entry.
fn post(
    txn: &Txn,
    org_id: &str,
    kind: EntryKind,
    amount: Micros,
    execution_id: Option<&str>,
    memo: Option<&str>,
) -> Result<()> {
    let account = db::account(txn, org_id)?;
    let posting = Posting {
        kind,
        amount,
        execution_id,
        memo,
    };
    post_to(txn, (org_id, account), posting)
}

/// One entry to record.
struct Posting<'a> {
    kind: EntryKind,
    amount: Micros,
    execution_id: Option<&'a str>,
    memo: Option<&'a str>,
}

/// [`post`] to an account already read.
fn post_to(
    txn: &Txn,
    (org_id, mut account): (&str, Account),
    Posting {
        kind,
        amount,
        execution_id,
        memo,
    }: Posting,
) -> Result<()> {
    let (debit, credit) = match kind {
        EntryKind::Deposit => (Bucket::External, Bucket::Available),
        EntryKind::Hold => (Bucket::Available, Bucket::Held),
        EntryKind::Settle => (Bucket::Held, Bucket::Spent),
        EntryKind::Release => (Bucket::Held, Bucket::Available),
        EntryKind::Absorbed => (Bucket::PlatformLoss, Bucket::ProviderPayable),
    };
    if account.apply(debit, credit, amount).is_none() {
        bail!("ledger would go negative: {kind:?} {amount} for {org_id}");
    }
    db::put_account(txn, org_id, &account)?;
    // Opaque to clients (a global counter would let one organization gauge the
    // others' activity from its gaps), and time-ordered within the process, so
    // an organization's entries sort by creation under their ids.
    let uuid = uuid::Uuid::now_v7();
    let entry = Entry {
        id: format!("{ENTRY_PREFIX}{uuid}"),
        organization_id: org_id.to_string(),
        kind,
        amount,
        debit,
        credit,
        execution_id: execution_id.map(str::to_string),
        memo: memo.map(str::to_string),
        created_at: crate::clock::now(),
    };
    db::append_entry(txn, uuid, &entry)
}

/// The most an organization may be credited in all: far beyond any real balance,
/// and far enough below where micro-dollars overflow that no bucket ever can.
pub const MAX_DEPOSITS: Micros = Micros(1_000_000_000_000 * crate::money::MICROS_PER_USD);

/// Whether a [`deposit`] was made.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deposit {
    Made,
    /// the organization's deposits would pass [`MAX_DEPOSITS`]; nothing was written
    OverLimit,
}

/// Credits `amount` to the organization's available balance. A foreseeable refusal
/// is an answer, not an error: an error aborts every write of its commit batch.
pub fn deposit(txn: &Txn, org_id: &str, amount: Micros, memo: &str) -> Result<Deposit> {
    let account = db::account(txn, org_id)?;
    if account
        .deposits
        .0
        .checked_add(amount.0)
        .is_none_or(|total| total > MAX_DEPOSITS.0)
    {
        return Ok(Deposit::OverLimit);
    }
    post(txn, org_id, EntryKind::Deposit, amount, None, Some(memo))?;
    Ok(Deposit::Made)
}

/// What an operator's credit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credit {
    /// the account as it is now
    Made(Account),
    NoSuchOrganization,
    /// the organization's deposits would pass [`MAX_DEPOSITS`]; nothing was written
    OverLimit,
}

/// Credits `amount` to an existing organization, with `memo` on the entry.
pub async fn credit(store: &Store, org_id: &str, amount: Micros, memo: String) -> Result<Credit> {
    let org_id = org_id.to_string();
    store
        .write(move |txn| {
            if !crate::auth::organization_exists(txn, &org_id)? {
                return Ok(Credit::NoSuchOrganization);
            }
            Ok(match deposit(txn, &org_id, amount, &memo)? {
                Deposit::Made => Credit::Made(db::account(txn, &org_id)?),
                Deposit::OverLimit => Credit::OverLimit,
            })
        })
        .await
}

/// Holds `amount` for an execution when the available balance covers it.
pub fn hold(txn: &Txn, org_id: &str, amount: Micros, execution_id: &str) -> Result<HoldResult> {
    let account = db::account(txn, org_id)?;
    if account.available < amount {
        return Ok(HoldResult::InsufficientBalance {
            available: account.available,
        });
    }
    let posting = Posting {
        kind: EntryKind::Hold,
        amount,
        execution_id: Some(execution_id),
        memo: None,
    };
    post_to(txn, (org_id, account), posting)?;
    Ok(HoldResult::Placed)
}

/// Resolves an execution's hold: `cost` (capped at the hold) is spent, the rest
/// returns to the balance, and any cost above the hold is recorded as absorbed by
/// the platform. The caller guarantees this runs once per hold (it is part of the
/// transition to a terminal state). Returns what was charged.
pub fn settle(
    txn: &Txn,
    org_id: &str,
    held: Micros,
    cost: Micros,
    execution_id: &str,
) -> Result<Micros> {
    let charged = cost.min(held);
    if charged > Micros::ZERO {
        post(
            txn,
            org_id,
            EntryKind::Settle,
            charged,
            Some(execution_id),
            None,
        )?;
    }
    let rest = Micros(held.0 - charged.0);
    if rest > Micros::ZERO {
        post(
            txn,
            org_id,
            EntryKind::Release,
            rest,
            Some(execution_id),
            None,
        )?;
    }
    if cost > held {
        let overage = Micros(cost.0 - held.0);
        post(
            txn,
            org_id,
            EntryKind::Absorbed,
            overage,
            Some(execution_id),
            None,
        )?;
    }
    Ok(charged)
}

/// Ledger entry ids: `le_<UUID v7>`.
const ENTRY_PREFIX: &str = "le_";

/// A page of the organization's ledger, newest first like every list, after the
/// entry `starting_after`: the entries that move its own money (the platform's own
/// entries about an execution, such as a cost it absorbed, are not the client's to
/// see). `None` when `starting_after` names no entry of the organization.
pub fn entries(
    reader: &impl Reader,
    org_id: &str,
    limit: usize,
    starting_after: Option<&str>,
) -> Result<Option<(Vec<Entry>, bool)>> {
    let before = match starting_after {
        None => None,
        Some(id) => match id
            .strip_prefix(ENTRY_PREFIX)
            .and_then(|uuid| uuid::Uuid::try_parse(uuid).ok())
        {
            Some(uuid) => Some(uuid),
            None => return Ok(None),
        },
    };
    db::entries_newest_first(reader, org_id, before, limit, |entry| {
        Account::touches(entry.debit) || Account::touches(entry.credit)
    })
}

/// Rebuilds every organization's account from the ledger, for audits and tests.
pub fn rebuild_from_entries(
    reader: &impl Reader,
) -> Result<std::collections::BTreeMap<String, Account>> {
    let mut accounts = std::collections::BTreeMap::<String, Account>::new();
    db::each_entry(reader, |entry| {
        let account = accounts.entry(entry.organization_id.clone()).or_default();
        if account
            .apply(entry.debit, entry.credit, entry.amount)
            .is_none()
        {
            bail!(
                "ledger entry {} overdraws {}",
                entry.id,
                entry.organization_id
            );
        }
        Ok(())
    })?;
    Ok(accounts)
}
