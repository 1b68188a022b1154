//! Settings of stored files: sizes, lifetimes, quotas and signed URLs.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSettings {
    /// largest upload, enforced while the bytes stream in
    pub max_upload_bytes: u64,
    /// how long files live unless the organization or the upload says otherwise
    pub default_ttl_days: u32,
    /// lifetime of signed upload and download URLs
    pub signed_url_seconds: u64,
    /// lifetime of the URL a provider gets for one input file of one attempt
    pub grant_seconds: u64,
    /// largest input file handed to an adapter as bytes (`inline-files`)
    pub max_inline_bytes: u64,
    /// how often expired files are deleted
    pub sweep_interval_seconds: u64,
    /// bytes an organization may store (uploads and outputs; only uploads are
    /// refused past it), unless the operator sets its own
    pub quota_bytes: u64,
    /// files an organization may store, likewise
    pub quota_files: u64,
}

impl Default for FileSettings {
    fn default() -> Self {
        FileSettings {
            max_upload_bytes: 150 * 1024 * 1024,
            default_ttl_days: 30,
            signed_url_seconds: 3600,
            grant_seconds: 600,
            max_inline_bytes: 20 * 1024 * 1024,
            sweep_interval_seconds: 60,
            quota_bytes: 10 * 1024 * 1024 * 1024,
            quota_files: 100_000,
        }
    }
}
