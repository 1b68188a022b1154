//! The host's modules form layers: no import loop among the top-level modules of
//! `host/src`, and the lowest layers import nothing of the host at all. Read from
//! the sources (every `crate::<module>` path outside test code), so a change that
//! closes a loop fails here with the loop named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Modules that must not import any other module of the host.
const FOUNDATIONS: &[&str] = &[
    "clock",
    "ids",
    "money",
    "store",
    "error",
    "durable",
    "host_pattern",
    "mac",
];

type Graph = BTreeMap<String, BTreeSet<String>>;

fn imports() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = Graph::new();
    for entry in walk(&src) {
        let relative = entry.strip_prefix(&src).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "main" || module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&entry).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let edges = graph.entry(module.clone()).or_default();
        for line in code.lines() {
            let line = line.split("//").next().unwrap_or_default();
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module && name.chars().all(|c| !c.is_uppercase()) {
                    edges.insert(name);
                }
            }
        }
    }
    graph
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// A path from `from` back to itself, if there is one.
fn loop_through(graph: &Graph, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_string(), vec![from.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((module, path)) = stack.pop() {
        for next in graph.get(&module).into_iter().flatten() {
            if next == from {
                let mut found = path.clone();
                found.push(next.clone());
                return Some(found);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

#[test]
fn no_import_loop_among_host_modules() {
    let graph = imports();
    assert!(graph.contains_key("executions") && graph.contains_key("plugins"));
    for module in graph.keys() {
        if let Some(found) = loop_through(&graph, module) {
            panic!("import loop: {}", found.join(" → "));
        }
    }
}

#[test]
fn the_foundations_import_nothing_of_the_host() {
    let graph = imports();
    for module in FOUNDATIONS {
        let edges = graph.get(*module).cloned().unwrap_or_default();
        assert!(edges.is_empty(), "{module} imports {edges:?}");
    }
}

/// What only the storage layer may name: the engine, its tables, the record codec.
const STORAGE_MARKS: &[&str] = &[
    "redb::",
    "open_table(",
    "store::table!",
    "store::get(",
    "store::get::<",
    "store::encode(",
    "store::decode(",
    "store::page(",
    ".postgres()",
    "INSERT INTO",
    "DELETE FROM",
];

/// Each module keeps its persistence behind its own `db` (a `db.rs`, or a `db/`
/// folder with a file per backend): no other file of the host names an engine, a
/// table or SQL.
#[test]
fn only_store_and_each_modules_db_touch_tables() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offenders = Vec::new();
    for path in walk(&src) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let relative = path.strip_prefix(&src).unwrap();
        let in_storage = relative
            .components()
            .any(|part| part.as_os_str() == "db" || part.as_os_str() == "store");
        if name == "db.rs" || in_storage {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (number, line) in code.lines().enumerate() {
            let line = line.split("//").next().unwrap_or_default();
            if let Some(mark) = STORAGE_MARKS.iter().find(|mark| line.contains(*mark)) {
                offenders.push(format!("{}:{}: {mark}", relative.display(), number + 1));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "storage outside db.rs:\n{}",
        offenders.join("\n")
    );
}
