//! Architecture invariants read off the source: every `crate::` path in `src/` (and every
//! `oxetcd::` path in `src/main.rs`) follows the layering table in ARCHITECTURE.md, and every
//! Rust file of the repository opens with a `//!` line saying what lives there.
//!
//! The table is read from ARCHITECTURE.md itself (between the `layering:begin` and
//! `layering:end` markers), so the map and the check cannot drift: a module missing from the
//! table, a row or an allowed entry naming a module that does not exist, or an import the table
//! does not allow fails here with the file, the line and the rule.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A module path inside the crate, as segments: `snapshot::format` → `["snapshot", "format"]`.
type ModPath = Vec<String>;

fn mod_path(text: &str) -> ModPath {
    text.split("::").map(str::to_owned).collect()
}

fn show(path: &[String]) -> String {
    path.join("::")
}

/// The layering table: for each row's module, the modules (or crate-root items) it may name.
struct Layering {
    rows: BTreeMap<ModPath, Vec<ModPath>>,
}

impl Layering {
    fn from_architecture_md() -> Layering {
        let text = read(&root().join("ARCHITECTURE.md"));
        let begin = text
            .find("<!-- layering:begin -->")
            .expect("ARCHITECTURE.md has a <!-- layering:begin --> marker");
        let end = text
            .find("<!-- layering:end -->")
            .expect("ARCHITECTURE.md has a <!-- layering:end --> marker");
        let mut rows = BTreeMap::new();
        for line in text[begin..end].lines() {
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
            if cells.len() != 2 || !cells[0].trim().starts_with('`') {
                continue;
            }
            let allowed: Vec<ModPath> = backticked(cells[1]).map(mod_path).collect();
            for module in backticked(cells[0]) {
                let previous = rows.insert(mod_path(module), allowed.clone());
                assert!(
                    previous.is_none(),
                    "ARCHITECTURE.md's layering table lists `{module}` twice"
                );
            }
        }
        assert!(
            !rows.is_empty(),
            "ARCHITECTURE.md's layering table has no rows"
        );
        Layering { rows }
    }

    /// The row that governs `module`: the longest row key that `module` starts with.
    fn row_for(&self, module: &[String]) -> Option<(&ModPath, &Vec<ModPath>)> {
        self.rows
            .iter()
            .filter(|(key, _)| module.starts_with(key))
            .max_by_key(|(key, _)| key.len())
    }
}

/// The `code spans` of a table cell.
fn backticked(cell: &str) -> impl Iterator<Item = &str> {
    cell.split('`').skip(1).step_by(2)
}

/// Every `.rs` file below `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("source directories are readable") {
            let path = entry.expect("directory entries are readable").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The module a file of `src/` is: `src/raft/storage.rs` → `raft::storage`, `src/snapshot/mod.rs`
/// → `snapshot`, `src/alarm.rs` → `alarm`, `src/lib.rs` → `lib`, `src/main.rs` → `main`.
fn module_of(file: &Path) -> ModPath {
    let rel = file
        .strip_prefix(root().join("src"))
        .expect("files come from src/")
        .with_extension("");
    let mut path: ModPath = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if path.len() > 1 && path.last().is_some_and(|last| last == "mod") {
        path.pop();
    }
    path
}

/// Whether `path` names something that exists: a module file under `src/`, a top-level module
/// declared in `src/lib.rs`, a module declared inline in its parent, or a function of the crate
/// root.
fn exists(path: &[String]) -> bool {
    let src = root().join("src");
    let rel: PathBuf = path.iter().collect();
    if src.join(&rel).with_extension("rs").is_file() || src.join(&rel).join("mod.rs").is_file() {
        return true;
    }
    match path {
        [item] => read(&src.join("lib.rs")).contains(&format!("pub fn {item}(")),
        [parent @ .., last] => {
            // A module declared inline in its parent (`pub mod etcdserverpb { … }` in proto.rs).
            let parent: PathBuf = parent.iter().collect();
            [
                src.join(&parent).with_extension("rs"),
                src.join(&parent).join("mod.rs"),
            ]
            .iter()
            .filter(|f| f.is_file())
            .any(|f| {
                read(f)
                    .lines()
                    .any(|l| l.trim() == format!("pub mod {last} {{"))
            })
        }
        [] => false,
    }
}

/// The code of a line without its `//` comment.
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// Every path a file names after `prefix` (`crate::` or `oxetcd::`), with `{…}` groups expanded:
/// `crate::{alarm, snapshot::{format, source}}` → `alarm`, `snapshot::format`,
/// `snapshot::source`. A group may continue on the following lines. Each path comes with the
/// 1-based line it starts on. `$crate::` and identifiers ending in the prefix are skipped.
fn crate_paths(text: &str, prefix: &str) -> Vec<(usize, ModPath)> {
    let code: Vec<&str> = text.lines().map(code_of).collect();
    let joined = code.join("\n");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = joined[from..].find(prefix) {
        let at = from + found;
        from = at + prefix.len();
        let before = joined[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == ':') {
            continue;
        }
        let line = joined[..at].matches('\n').count() + 1;
        let mut rest = joined[from..].chars().peekable();
        for path in use_tree(&mut rest, Vec::new()) {
            if !path.is_empty() {
                out.push((line, path));
            }
        }
    }
    out
}

/// Parses one use tree (`a::b`, `a::{b, c::d}`, `{a, b}`, `self`) after `base`, returning the
/// paths it names; `self` inside a group names the group's own path.
fn use_tree(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    mut base: ModPath,
) -> Vec<ModPath> {
    loop {
        skip_space(chars);
        if chars.peek() == Some(&'{') {
            chars.next();
            let mut out = Vec::new();
            loop {
                skip_space(chars);
                match chars.peek() {
                    Some('}') => {
                        chars.next();
                        return out;
                    }
                    Some(',') => {
                        chars.next();
                    }
                    None => return out,
                    _ => out.extend(use_tree(chars, base.clone())),
                }
            }
        }
        let ident: String =
            std::iter::from_fn(|| chars.next_if(|c| c.is_alphanumeric() || *c == '_')).collect();
        if ident.is_empty() {
            return vec![base];
        }
        if ident != "self" {
            base.push(ident);
        }
        if chars.peek() == Some(&':') {
            chars.next();
            if chars.next_if_eq(&':').is_none() {
                return vec![base];
            }
        } else {
            return vec![base];
        }
    }
}

fn skip_space(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while chars.next_if(|c| c.is_whitespace()).is_some() {}
}

/// The top-level modules `src/lib.rs` declares, plus the crate roots `lib` and `main`.
fn declared_modules() -> Vec<String> {
    let lib = read(&root().join("src/lib.rs"));
    let mut declared: Vec<String> = lib
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")
                .map(|m| m.trim_end_matches(';').trim().to_owned())
        })
        .collect();
    declared.extend(["lib".to_owned(), "main".to_owned()]);
    declared
}

#[test]
fn imports_follow_the_layering_table_in_architecture_md() {
    let layering = Layering::from_architecture_md();
    let mut problems = Vec::new();

    // The table and the crate name the same modules.
    for module in declared_modules() {
        if layering.row_for(std::slice::from_ref(&module)).is_none() {
            problems.push(format!(
                "module `{module}` has no row in ARCHITECTURE.md's layering table"
            ));
        }
    }
    for (key, allowed) in &layering.rows {
        if !exists(key) {
            problems.push(format!(
                "ARCHITECTURE.md's layering table has a row for `{}`, which does not exist",
                show(key)
            ));
        }
        for entry in allowed.iter().filter(|e| !exists(e)) {
            problems.push(format!(
                "ARCHITECTURE.md's layering table lets `{}` use `{}`, which does not exist",
                show(key),
                show(entry)
            ));
        }
    }

    for file in rust_files(&root().join("src")) {
        let module = module_of(&file);
        let Some((key, allowed)) = layering.row_for(&module) else {
            continue;
        };
        let prefix = if module == ["main"] {
            "oxetcd::"
        } else {
            "crate::"
        };
        let rel = file.strip_prefix(root()).expect("files come from the repo");
        for (line, used) in crate_paths(&read(&file), prefix) {
            // A module's own code, and anything the row allows (a whole module or one of its
            // submodules), is fine.
            if used.starts_with(key) || allowed.iter().any(|a| used.starts_with(a)) {
                continue;
            }
            let allowed_list = if allowed.is_empty() {
                "nothing of the crate".to_owned()
            } else {
                allowed
                    .iter()
                    .map(|a| format!("`{}`", show(a)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            problems.push(format!(
                "{}:{line}: `{}` may not use `{prefix}{}` (ARCHITECTURE.md: `{}` may use {allowed_list})",
                rel.display(),
                show(&module),
                show(&used),
                show(key),
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "layering violations:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_rust_file_opens_with_a_module_doc_line() {
    let mut files = Vec::new();
    for dir in ["src", "tests", "examples"] {
        files.extend(rust_files(&root().join(dir)));
    }
    files.push(root().join("build.rs"));
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !read(f).starts_with("//!"))
        .map(|f| {
            f.strip_prefix(root())
                .expect("files come from the repo")
                .display()
                .to_string()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "files that do not open with a `//!` line saying what lives there:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_import_scanner_expands_groups_and_skips_macro_paths() {
    let text = "use crate::{\n    alarm::Alarms,\n    snapshot::{self, format::Reader},\n};\n\
                let x = crate::mvcc::Store::open(crate::fatal(\"\"));\n\
                $crate::metrics::x!(); // crate::api in a comment\n\
                let y = oxetcd::server::run;";
    let found: Vec<(usize, String)> = crate_paths(text, "crate::")
        .into_iter()
        .map(|(line, path)| (line, show(&path)))
        .collect();
    let expected = [
        (1, "alarm::Alarms"),
        (1, "snapshot"),
        (1, "snapshot::format::Reader"),
        (5, "mvcc::Store::open"),
        (5, "fatal"),
    ];
    let expected: Vec<(usize, String)> = expected
        .iter()
        .map(|(line, path)| (*line, path.to_string()))
        .collect();
    assert_eq!(found, expected);
    assert_eq!(show(&crate_paths(text, "oxetcd::")[0].1), "server::run");

    assert_eq!(
        module_of(&root().join("src/raft/storage.rs")),
        mod_path("raft::storage")
    );
    assert_eq!(
        module_of(&root().join("src/snapshot/mod.rs")),
        mod_path("snapshot")
    );
    assert_eq!(module_of(&root().join("src/alarm.rs")), mod_path("alarm"));
    assert!(exists(&mod_path("snapshot::format")) && exists(&mod_path("fatal")));
    assert!(exists(&mod_path("proto::etcdserverpb")) && !exists(&mod_path("proto::nothing")));
    assert!(!exists(&mod_path("snapshot::nothing")));
}

#[test]
fn a_violation_names_file_line_and_rule() {
    // The table's longest matching row governs a submodule: `snapshot::format` may not reach up
    // to `apply` even though nothing forbids it for `snapshot` as a whole.
    let layering = Layering {
        rows: BTreeMap::from([
            (
                mod_path("snapshot"),
                vec![mod_path("storage"), mod_path("raft")],
            ),
            (mod_path("snapshot::format"), vec![mod_path("storage")]),
        ]),
    };
    let (key, allowed) = layering
        .row_for(&mod_path("snapshot::format"))
        .expect("a row governs snapshot::format");
    assert_eq!(show(key), "snapshot::format");
    let used = &crate_paths("use crate::raft::snapshots;", "crate::")[0].1;
    assert!(!used.starts_with(key) && !allowed.iter().any(|a| used.starts_with(a)));
    let (key, _) = layering
        .row_for(&mod_path("snapshot::source"))
        .expect("a row governs snapshot::source");
    assert_eq!(show(key), "snapshot");
}
