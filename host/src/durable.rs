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
}
