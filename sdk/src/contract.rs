//! The contract version, read at compile time from the WIT package's own line
//! (`package modelroute:provider@X.Y.Z;`), so `wit/adapter.wit` is its one source.
//! The host compiles this same file against the same WIT, so the version a plugin
//! stamps and the versions the host accepts cannot drift apart.

/// The contract version: the version of the WIT package `modelroute:provider`.
pub const API_VERSION: &str = package_version(include_str!("../wit/adapter.wit"));

const PACKAGE_LINE: &[u8] = b"package modelroute:provider@";

/// The version on `wit`'s line `package modelroute:provider@…;`. Evaluated at
/// compile time: a WIT without that line fails the build.
pub const fn package_version(wit: &str) -> &str {
    let text = wit.as_bytes();
    let mut start = 0;
    while !(starts_line(text, start) && has_prefix(text, start, PACKAGE_LINE)) {
        start += 1;
        assert!(
            start < text.len(),
            "the WIT has no `package modelroute:provider@…;` line"
        );
    }
    let (_, rest) = text.split_at(start + PACKAGE_LINE.len());
    let mut end = 0;
    while end < rest.len() && rest[end] != b';' {
        assert!(rest[end] != b'\n', "the WIT package line has no `;`");
        end += 1;
    }
    assert!(
        end > 0 && end < rest.len(),
        "the WIT package line has no version"
    );
    let (version, _) = rest.split_at(end);
    match core::str::from_utf8(version) {
        Ok(version) => version,
        Err(_) => panic!("the WIT package version is not text"),
    }
}

const fn starts_line(text: &[u8], at: usize) -> bool {
    at == 0 || text[at - 1] == b'\n'
}

const fn has_prefix(text: &[u8], at: usize, prefix: &[u8]) -> bool {
    if at + prefix.len() > text.len() {
        return false;
    }
    let mut i = 0;
    while i < prefix.len() {
        if text[at + i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}
