//! Files that survive a power loss. A rename is only durable once the directory
//! holding the new name is synced, and a file's bytes only once the file is: every
//! write the server relies on after a crash goes through here.

use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `bytes` atomically and durably: a private temporary file in
/// the same directory is written and synced, renamed over `path`, and the
/// directory synced. Readers see the old bytes or the new ones, never a mix; safe
/// when several processes write the same path.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let temporary = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    rename(&temporary, path)
}

/// Renames `from` to `to` and syncs `to`'s directory, so the new name survives a
/// power loss. `from` must already be synced. (Across directories, the old name
/// may come back after a crash too: callers rename out of scratch directories
/// they clear at start.)
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    sync_dir(parent(to))
}

/// Writes a secret readable by its owner only, durably and whole: a temporary file
/// is written and synced, then renamed into place (never over an existing file),
/// and the directory is synced so that the name survives a power loss too. A crash
/// leaves either no file or the whole secret, never an empty or partial one.
pub fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let context = || format!("writing {}", path.display());
    let dir = parent(path);
    // tempfile creates the file with mode 0600 on unix.
    let mut file = tempfile::Builder::new()
        .prefix(".secret-")
        .tempfile_in(dir)
        .with_context(context)?;
    writeln!(file, "{secret}").with_context(context)?;
    file.as_file().sync_all().with_context(context)?;
    file.persist_noclobber(path)
        .map_err(|error| error.error)
        .with_context(context)?;
    sync_dir(dir).with_context(|| format!("syncing {}", dir.display()))
}

/// Flushes a directory's entries (names created, renamed or removed in it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    // Directories cannot be opened as files on Windows; NTFS journals renames.
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durable_write_replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        write(&path, b"first").unwrap();
        write(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["record.json"]);
    }

    #[test]
    fn a_write_into_a_missing_directory_fails_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write(&dir.path().join("absent/record.json"), b"x").is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_secret_is_written_whole_for_its_owner_only_and_never_over_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        write_secret(&path, "op_first").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "op_first\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(write_secret(&path, "op_second").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "op_first\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
    }
}
