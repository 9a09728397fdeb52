//! Architecture invariants: the `crate::` paths each layer's source names, checked against the
//! dependency direction in ARCHITECTURE.md (`storage` and `raft` know no etcd types, `peer` asks
//! the API layer through `PeerHandlers`, the snapshot format sits below `apply`, which installs
//! raft snapshots with it). Comment lines are skipped; code in `#[cfg(test)]` modules counts.

use std::path::{Path, PathBuf};

/// Top-level modules each source path must not name as `crate::<module>`.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "src/storage",
        &[
            "alarm",
            "api",
            "apply",
            "lease",
            "membership",
            "mvcc",
            "node",
            "peer",
            "proto",
            "raft",
            "server",
            "snapshot",
            "txn",
            "watch",
        ],
    ),
    ("src/consistent_index.rs", &["apply", "raft", "snapshot"]),
    (
        "src/membership.rs",
        &["api", "apply", "node", "peer", "raft", "server"],
    ),
    (
        "src/raft",
        &[
            "alarm",
            "api",
            "apply",
            "lease",
            "membership",
            "mvcc",
            "node",
            "peer",
            "proto",
            "server",
            "snapshot",
            "txn",
            "watch",
        ],
    ),
    (
        "src/snapshot/format.rs",
        &[
            "api",
            "apply",
            "membership",
            "node",
            "peer",
            "raft",
            "server",
        ],
    ),
    ("src/snapshot", &["api", "apply", "node", "peer", "server"]),
    ("src/apply", &["api", "node", "peer", "raft", "server"]),
    (
        "src/peer",
        &[
            "alarm",
            "api",
            "apply",
            "lease",
            "membership",
            "mvcc",
            "server",
            "snapshot",
        ],
    ),
];

/// Words no line under these paths may contain.
const FORBIDDEN_WORDS: &[(&str, &[&str])] = &[("src/raft", &["etcdserverpb", "mvccpb"])];

fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).unwrap() {
        files.extend(rust_files(&entry.unwrap().path()));
    }
    files.retain(|f| f.extension().is_some_and(|e| e == "rs"));
    files
}

/// (file, line number, line) of every non-comment line under `path`.
fn code_lines(path: &str) -> Vec<(PathBuf, usize, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = rust_files(&root.join(path));
    assert!(!files.is_empty(), "no Rust files under {path}");
    let mut lines = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if !line.trim_start().starts_with("//") {
                lines.push((file.clone(), n + 1, line.to_string()));
            }
        }
    }
    lines
}

/// The top-level modules a line names as `crate::<module>`.
fn crate_modules(line: &str) -> Vec<&str> {
    line.match_indices("crate::")
        .map(|(at, prefix)| {
            let rest = &line[at + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

#[test]
fn layers_name_only_what_is_below_them() {
    let mut violations = Vec::new();
    for (path, forbidden) in FORBIDDEN {
        for (file, n, line) in code_lines(path) {
            for module in crate_modules(&line) {
                if forbidden.contains(&module) {
                    violations.push(format!(
                        "{}:{n}: {path} must not use crate::{module}: {}",
                        file.display(),
                        line.trim()
                    ));
                }
            }
        }
    }
    for (path, words) in FORBIDDEN_WORDS {
        for (file, n, line) in code_lines(path) {
            for word in *words {
                if line.contains(word) {
                    violations.push(format!(
                        "{}:{n}: {path} must not name {word}: {}",
                        file.display(),
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_scanner_finds_crate_paths() {
    assert_eq!(
        crate_modules("use crate::snapshot::{format, x}; crate::fatal(\"\")"),
        vec!["snapshot", "fatal"]
    );
    assert!(crate_modules("use super::hex;").is_empty());
}
