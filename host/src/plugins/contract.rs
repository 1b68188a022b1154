//! The contract version this host speaks, derived from the WIT package it binds
//! (`sdk/wit/adapter.wit`, the SDK's own copy) by the very code the SDK uses to
//! derive the version it stamps into every plugin.

#[path = "../../../sdk/src/contract.rs"]
mod wit_package;

pub use wit_package::API_VERSION;

/// Contract versions this host speaks: exactly the one its bindings were generated
/// from, since a component of another version would not match them.
pub const SUPPORTED_API_VERSIONS: &[&str] = &[API_VERSION];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::tests::component;
    use std::path::Path;

    /// The version on the WIT file's package line, read the plain way at run time.
    fn wit_package_version() -> String {
        let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/wit/adapter.wit");
        let text = std::fs::read_to_string(&wit).unwrap();
        let line = text
            .lines()
            .find_map(|line| line.strip_prefix("package modelroute:provider@"))
            .expect("the WIT names its package");
        line.trim_end_matches(';').to_string()
    }

    #[test]
    fn the_host_speaks_the_version_of_the_wit_it_binds() {
        assert_eq!(API_VERSION, wit_package_version());
        assert_eq!(SUPPORTED_API_VERSIONS, [API_VERSION]);
    }

    /// The SDK's template, built by `make plugins`, ties the three together: its
    /// exports name the WIT package it was generated from, its stamp is the SDK's
    /// derived version, and both are the version the host accepts.
    #[test]
    fn a_plugin_built_with_the_sdk_stamps_and_exports_the_hosts_contract_version() {
        let wasm = component("target/test-plugins/template.wasm");
        assert_eq!(
            super::super::runtime::api_version(&wasm).unwrap(),
            API_VERSION
        );
        let mut exports = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(&wasm) {
            if let wasmparser::Payload::ComponentExportSection(section) = payload.unwrap() {
                for export in section {
                    exports.push(export.unwrap().name.name.to_string());
                }
            }
        }
        let adapter = format!("modelroute:provider/adapter@{API_VERSION}");
        assert!(exports.contains(&adapter), "{adapter} not in {exports:?}");
    }

    #[test]
    fn the_version_is_read_from_the_package_line_only() {
        let wit = "/// package modelroute:provider@9.9.9;\npackage modelroute:provider@1.2.3;\n";
        assert_eq!(wit_package::package_version(wit), "1.2.3");
    }
}
