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
    /// where the bytes live
    pub storage: StorageSettings,
}

/// `[files.storage]`: `backend = "local"` (the default: under the data directory)
/// or `backend = "s3"` with the bucket's `endpoint`, `bucket` and `region`; its
/// credentials come from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum StorageSettings {
    #[default]
    Local,
    S3(S3Settings),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// the store's URL (`http://127.0.0.1:9000`); AWS's own when absent
    pub endpoint: Option<String>,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
}

fn default_region() -> String {
    "us-east-1".into()
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
            storage: StorageSettings::Local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(toml: &str) -> Result<StorageSettings, toml::de::Error> {
        #[derive(Deserialize)]
        struct Files {
            storage: StorageSettings,
        }
        toml::from_str::<Files>(toml).map(|files| files.storage)
    }

    #[test]
    fn the_storage_backend_is_chosen_by_name_and_checked() {
        assert!(matches!(
            storage("[storage]\nbackend = \"local\"").unwrap(),
            StorageSettings::Local
        ));
        let StorageSettings::S3(s3) = storage(
            "[storage]\nbackend = \"s3\"\nendpoint = \"http://127.0.0.1:9000\"\nbucket = \"files\"",
        )
        .unwrap() else {
            panic!("not s3");
        };
        assert_eq!(
            (
                s3.endpoint.as_deref(),
                s3.bucket.as_str(),
                s3.region.as_str()
            ),
            (Some("http://127.0.0.1:9000"), "files", "us-east-1")
        );
        for wrong in [
            "[storage]\nbackend = \"s3\"",
            "[storage]\nbackend = \"ftp\"",
            "[storage]\nbackend = \"s3\"\nbucket = \"b\"\nbukcet = \"c\"",
        ] {
            assert!(storage(wrong).is_err(), "{wrong}");
        }
    }
}
