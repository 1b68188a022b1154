//! File records on PostgreSQL: `files` (the expiry queue is its index by expiry),
//! `file_usage`, `file_objects_unreferenced` and `file_audit`.

use anyhow::Result;
use chrono::{DateTime, Utc};
use postgres::types::Json;

use super::super::FileRecord;
use super::super::audit::AuditEntry;
use super::super::quota::OrgFiles;
use super::Due;
use crate::store::Session;
use crate::store::postgres::{self as pg, from_bigint, label, parse_label, record, to_bigint};

pub fn file(pg: &Session, file_id: &str) -> Result<Option<FileRecord>> {
    let sql = format!("SELECT record FROM files WHERE id = $1{}", pg.for_update());
    pg.query_opt(&sql, &[&file_id])?
        .map(|row| record(&row))
        .transpose()
}

/// Writes the record, new or changed.
pub fn save(pg: &Session, file: &FileRecord) -> Result<()> {
    pg.execute(
        "INSERT INTO files (id, organization_id, status, purpose, size_bytes, sha256, \
         object_key, created_at, expires_at, record) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO UPDATE SET \
         status = EXCLUDED.status, size_bytes = EXCLUDED.size_bytes, sha256 = EXCLUDED.sha256, \
         object_key = EXCLUDED.object_key, expires_at = EXCLUDED.expires_at, \
         record = EXCLUDED.record",
        &[
            &file.file_id,
            &file.organization_id,
            &label(&file.status)?,
            &file.purpose,
            &to_bigint(file.size_bytes)?,
            &file.sha256,
            &file.object_key(),
            &file.created_at,
            &file.expires_at,
            &Json(file),
        ],
    )?;
    Ok(())
}

pub fn remove(pg: &Session, file: &FileRecord) -> Result<()> {
    pg.execute("DELETE FROM files WHERE id = $1", &[&file.file_id])?;
    Ok(())
}

pub fn note_unreferenced(pg: &Session, object: &str) -> Result<()> {
    pg.execute(
        "INSERT INTO file_objects_unreferenced (object_key) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&object],
    )?;
    Ok(())
}

pub fn unreferenced(pg: &Session, limit: usize) -> Result<Vec<String>> {
    let rows = pg.query(
        "SELECT object_key FROM file_objects_unreferenced ORDER BY object_key LIMIT $1",
        &[&(limit as i64)],
    )?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

pub fn forget_unreferenced(pg: &Session, objects: &[String]) -> Result<()> {
    pg.execute(
        "DELETE FROM file_objects_unreferenced WHERE object_key = ANY($1)",
        &[&objects],
    )?;
    Ok(())
}

pub fn due_for_expiry(pg: &Session, now: DateTime<Utc>, limit: usize) -> Result<Vec<Due>> {
    let rows = pg.query(
        "SELECT id FROM files WHERE expires_at < $1 ORDER BY expires_at, id LIMIT $2",
        &[&now, &(limit as i64)],
    )?;
    Ok(rows
        .iter()
        .map(|row| Due {
            entry: String::new(),
            file_id: row.get(0),
        })
        .collect())
}

pub fn page_of_org(
    pg: &Session,
    org_id: &str,
    after: Option<&FileRecord>,
    limit: usize,
    keep: impl FnMut(&FileRecord) -> bool,
) -> Result<(Vec<FileRecord>, bool)> {
    let after = after.map(|after| (after.created_at, after.file_id.clone()));
    pg::page_newest_first(pg, "files", org_id, after, limit, keep)
}

pub fn usage(pg: &Session, org_id: &str) -> Result<OrgFiles> {
    let sql = format!(
        "SELECT bytes, files, quota_bytes, quota_files FROM file_usage \
         WHERE organization_id = $1{}",
        pg.for_update()
    );
    let Some(row) = pg.query_opt(&sql, &[&org_id])? else {
        return Ok(OrgFiles::default());
    };
    let optional = |value: Option<i64>| value.map(from_bigint).transpose();
    Ok(OrgFiles {
        bytes: from_bigint(row.get(0))?,
        files: from_bigint(row.get(1))?,
        quota_bytes: optional(row.get(2))?,
        quota_files: optional(row.get(3))?,
    })
}

pub fn put_usage(pg: &Session, org_id: &str, usage: &OrgFiles) -> Result<()> {
    let optional = |value: Option<u64>| value.map(to_bigint).transpose();
    pg.execute(
        "INSERT INTO file_usage (organization_id, bytes, files, quota_bytes, quota_files) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (organization_id) DO UPDATE SET \
         bytes = EXCLUDED.bytes, files = EXCLUDED.files, quota_bytes = EXCLUDED.quota_bytes, \
         quota_files = EXCLUDED.quota_files",
        &[
            &org_id,
            &to_bigint(usage.bytes)?,
            &to_bigint(usage.files)?,
            &optional(usage.quota_bytes)?,
            &optional(usage.quota_files)?,
        ],
    )?;
    Ok(())
}

pub fn append_audit(pg: &Session, entry: &AuditEntry) -> Result<()> {
    pg.execute(
        "INSERT INTO file_audit (file_id, organization_id, action, actor, address, at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &entry.file_id,
            &entry.organization_id,
            &label(&entry.action)?,
            &entry.actor,
            &entry.address,
            &entry.at,
        ],
    )?;
    Ok(())
}

pub fn audit_of(pg: &Session, file_id: &str) -> Result<Vec<AuditEntry>> {
    let rows = pg.query(
        "SELECT at, organization_id, file_id, action, actor, address FROM file_audit \
         WHERE file_id = $1 ORDER BY at, seq",
        &[&file_id],
    )?;
    rows.iter()
        .map(|row| {
            Ok(AuditEntry {
                at: row.get(0),
                organization_id: row.get(1),
                file_id: row.get(2),
                action: parse_label(row.get(3))?,
                actor: row.get(4),
                address: row.get(5),
            })
        })
        .collect()
}
