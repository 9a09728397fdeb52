//! The alert rules in `alerts/`: `promtool check rules` is clean, the promtool unit tests in
//! `alerts/tests/` pass and cover every alert firing and staying silent, every rule carries a
//! severity, summary, description and a runbook_url whose section exists in `docs/runbooks.md`,
//! the etcd group keeps the mixin's names, `for` and severities, and every metric a rule uses is one
//! the server exports (`common/metric_names.rs`).
//!
//! Needs Debian's `promtool` (`apt-get install prometheus`); `OXETCD_TEST_PROMTOOL` overrides the
//! binary. The YAML files are read with a small block-style YAML reader below (no YAML crate).

use crate::common::metric_names;
use crate::common::promql;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use metric_names::is_exported;
use promql::{metric_names_in, selectors_in};

/// Where the package installs docs/runbooks.md; every runbook_url is this plus `#<anchor>`.
const RUNBOOK_BASE: &str = "file:///usr/share/doc/oxetcd/runbooks.md";
/// The selector every rule's series carry (the etcd mixin's default `etcd_selector`).
const SELECTOR: (&str, &str, &str) = ("job", "=~", ".*etcd.*");
const SEVERITIES: &[&str] = &["warning", "critical"];
const PROMTOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// The etcd mixin's alerts (contrib/mixin, default config): name, `for`, severity, and how the
/// expression ends (its threshold), in the mixin's order.
const MIXIN: &[(&str, &str, &str, &str)] = &[
    ("etcdMembersDown", "20m", "warning", "> 0"),
    (
        "etcdInsufficientMembers",
        "3m",
        "critical",
        "< ((count(up{job=~\".*etcd.*\"}) without (instance) + 1) / 2)",
    ),
    ("etcdNoLeader", "1m", "critical", "== 0"),
    ("etcdHighNumberOfLeaderChanges", "5m", "warning", ">= 4"),
    (
        "etcdHighNumberOfFailedGRPCRequests",
        "10m",
        "warning",
        "> 1",
    ),
    (
        "etcdHighNumberOfFailedGRPCRequests",
        "5m",
        "critical",
        "> 5",
    ),
    ("etcdGRPCRequestsSlow", "10m", "critical", "> 0.15"),
    ("etcdMemberCommunicationSlow", "10m", "warning", "> 0.15"),
    ("etcdHighNumberOfFailedProposals", "15m", "warning", "> 5"),
    ("etcdHighFsyncDurations", "10m", "warning", "> 0.5"),
    ("etcdHighFsyncDurations", "10m", "critical", "> 1"),
    ("etcdHighCommitDurations", "10m", "warning", "> 0.25"),
    ("etcdDatabaseQuotaLowSpace", "10m", "critical", "> 95"),
    (
        "etcdExcessiveDatabaseGrowth",
        "10m",
        "warning",
        "> etcd_server_quota_backend_bytes{job=~\".*etcd.*\"}",
    ),
    (
        "etcdDatabaseHighFragmentationRatio",
        "10m",
        "warning",
        "> 104857600",
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `*.yaml` / `*.yml` files directly in `dir` (relative to the crate root), sorted.
fn yaml_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .map(|name| format!("{dir}/{name}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {dir}");
    files
}

fn rule_files() -> Vec<String> {
    yaml_files("alerts")
}

fn test_files() -> Vec<String> {
    yaml_files("alerts/tests")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// promtool
// ---------------------------------------------------------------------------------------------

struct Run {
    success: bool,
    code: Option<i32>,
    /// stdout and stderr together (promtool prints failures on stderr).
    output: String,
}

/// Runs promtool in the crate root with a deadline; panics if it is not installed.
fn promtool(args: &[&str]) -> Run {
    let bin = std::env::var("OXETCD_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let mut child = match Command::new(&bin)
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`{bin}` not found: the alert tests need Prometheus's promtool; install it with \
             `apt-get install prometheus` (Debian ships /usr/bin/promtool in that package)"
        ),
        Err(e) => panic!("cannot run `{bin}`: {e}"),
    };
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + PROMTOOL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{bin} {}` did not finish within {PROMTOOL_TIMEOUT:?}",
                args.join(" ")
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    let output = format!(
        "{}{}",
        out_reader.join().unwrap(),
        err_reader.join().unwrap()
    );
    Run {
        success: status.success(),
        code: status.code(),
        output,
    }
}

/// Runs `promtool <command...> <files...>` and asserts it succeeded with one SUCCESS per file.
fn promtool_succeeds_per_file(command: &[&str], files: &[String]) -> Run {
    let mut args = command.to_vec();
    args.extend(files.iter().map(String::as_str));
    let run = promtool(&args);
    let what = command.join(" ");
    assert!(
        run.success,
        "promtool {what} failed (exit {:?}):\n{}",
        run.code, run.output
    );
    assert_eq!(
        run.output.matches("SUCCESS").count(),
        files.len(),
        "expected one SUCCESS per file from promtool {what}:\n{}",
        run.output
    );
    run
}

#[test]
fn promtool_check_rules_is_clean() {
    let run = promtool_succeeds_per_file(
        &["check", "rules", "--lint=all", "--lint-fatal"],
        &rule_files(),
    );
    let lower = run.output.to_lowercase();
    for bad in ["warn", "lint", "failed", "error"] {
        assert!(
            !lower.contains(bad),
            "promtool check rules printed `{bad}`:\n{}",
            run.output
        );
    }
}

#[test]
fn promtool_unit_tests_pass() {
    promtool_succeeds_per_file(&["test", "rules"], &test_files());
}

// ---------------------------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Rule {
    file: String,
    group: String,
    alert: String,
    expr: String,
    for_duration: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn string_map(node: Option<&Yaml>, what: &str) -> BTreeMap<String, String> {
    match node {
        None | Some(Yaml::Null) => BTreeMap::new(),
        Some(Yaml::Map(entries)) => entries
            .iter()
            .map(|(k, v)| {
                let v = v
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}.{k} is not a string: {v:?}"));
                (k.clone(), v.to_owned())
            })
            .collect(),
        Some(other) => panic!("{what} is not a mapping: {other:?}"),
    }
}

fn rules() -> Vec<Rule> {
    let mut rules = Vec::new();
    for file in rule_files() {
        let doc = parse_yaml(&read(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        for group in doc
            .get("groups")
            .and_then(Yaml::as_seq)
            .unwrap_or_else(|| panic!("{file}: no `groups:` list"))
        {
            let group_name = group
                .get("name")
                .and_then(Yaml::as_str)
                .unwrap_or_else(|| panic!("{file}: a group without a name"))
                .to_owned();
            for rule in group
                .get("rules")
                .and_then(Yaml::as_seq)
                .unwrap_or_else(|| panic!("{file}: group {group_name} has no rules"))
            {
                let Some(alert) = rule.get("alert").and_then(Yaml::as_str) else {
                    panic!(
                        "{file}: group {group_name}: only alerting rules are expected: {rule:?}"
                    );
                };
                let what = format!("{file}: {alert}");
                rules.push(Rule {
                    file: file.clone(),
                    group: group_name.clone(),
                    alert: alert.to_owned(),
                    expr: rule
                        .get("expr")
                        .and_then(Yaml::as_str)
                        .unwrap_or_else(|| panic!("{what}: no expr"))
                        .to_owned(),
                    for_duration: rule.get("for").and_then(Yaml::as_str).map(str::to_owned),
                    labels: string_map(rule.get("labels"), &format!("{what}: labels")),
                    annotations: string_map(
                        rule.get("annotations"),
                        &format!("{what}: annotations"),
                    ),
                });
            }
        }
    }
    assert!(!rules.is_empty(), "no alerting rules found");
    rules
}

/// Expression with runs of whitespace collapsed to one space.
fn normalized(expr: &str) -> String {
    expr.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn every_rule_has_severity_summary_description_and_runbook() {
    for rule in rules() {
        let who = format!("{} ({}, group {})", rule.alert, rule.file, rule.group);
        let severity = rule.labels.get("severity").map(String::as_str);
        assert!(
            severity.is_some_and(|s| SEVERITIES.contains(&s)),
            "{who}: labels.severity must be one of {SEVERITIES:?}, is {severity:?}"
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                rule.annotations
                    .get(key)
                    .is_some_and(|v| !v.trim().is_empty()),
                "{who}: annotations.{key} missing or empty"
            );
        }
        let summary = &rule.annotations["summary"];
        assert!(
            !summary.contains("{{"),
            "{who}: the summary is a fixed headline; put templated detail in the description"
        );
        assert!(
            rule.alert.starts_with("etcd") || rule.alert.starts_with("oxetcd"),
            "{who}: alert names are camelCase starting with etcd or oxetcd"
        );
        assert!(
            rule.alert.chars().all(|c| c.is_ascii_alphanumeric()),
            "{who}: alert names are camelCase, letters and digits only"
        );
    }
}

/// GitHub's heading anchor: lower case, spaces to `-`, everything but letters, digits, `-`, `_`
/// dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// (heading text, anchor) of every Markdown heading outside fenced code blocks.
fn headings(markdown: &str) -> Vec<(String, String)> {
    let mut in_fence = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            let text = line[hashes..].trim().to_owned();
            let anchor = slug(&text);
            out.push((text, anchor));
        }
    }
    out
}

#[test]
fn every_runbook_url_points_at_its_alert_section() {
    let runbooks = read("docs/runbooks.md");
    let headings = headings(&runbooks);
    let mut seen = BTreeSet::new();
    for (text, anchor) in &headings {
        assert!(
            seen.insert(anchor.clone()),
            "docs/runbooks.md: two headings share the anchor #{anchor} (second: {text:?})"
        );
    }
    let rules = rules();
    let alert_names: BTreeSet<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    for rule in &rules {
        let Some(url) = rule.annotations.get("runbook_url") else {
            panic!("{}: no runbook_url annotation", rule.alert);
        };
        let (base, anchor) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("{}: runbook_url {url} has no #anchor", rule.alert));
        assert_eq!(
            base, RUNBOOK_BASE,
            "{}: runbook_url must point at the installed runbooks",
            rule.alert
        );
        assert_eq!(
            anchor,
            slug(&rule.alert),
            "{}: runbook_url must point at the section named after the alert",
            rule.alert
        );
        assert!(
            headings
                .iter()
                .any(|(text, a)| a == anchor && *text == rule.alert),
            "{}: docs/runbooks.md has no heading `{}` (anchor #{anchor})",
            rule.alert,
            rule.alert
        );
    }
    // No stale sections: every heading that looks like an alert name is one.
    for (text, _) in &headings {
        let looks_like_alert = (text.starts_with("etcd") || text.starts_with("oxetcd"))
            && text.chars().all(|c| c.is_ascii_alphanumeric());
        if looks_like_alert {
            assert!(
                alert_names.contains(text.as_str()),
                "docs/runbooks.md has a section for `{text}`, which is no alert in alerts/"
            );
        }
    }
}

#[test]
fn every_metric_in_every_rule_is_exported() {
    for rule in rules() {
        let names = metric_names_in(&rule.expr);
        assert!(
            !names.is_empty(),
            "{}: no metric in {}",
            rule.alert,
            rule.expr
        );
        for name in names {
            assert!(
                is_exported(&name),
                "{}: `{name}` is not a metric the server exports (tests/it/common/metric_names.rs)",
                rule.alert
            );
        }
        for selector in selectors_in(&rule.expr) {
            let (label, op, value) = SELECTOR;
            assert!(
                selector.has_matcher(label, op, value),
                "{}: selector {selector:?} lacks {label}{op}\"{value}\"",
                rule.alert
            );
        }
    }
}

#[test]
fn the_etcd_group_keeps_the_mixin_alerts() {
    let rules = rules();
    let etcd: Vec<&Rule> = rules.iter().filter(|r| r.group == "etcd").collect();
    let got: Vec<(&str, &str, &str)> = etcd
        .iter()
        .map(|r| {
            (
                r.alert.as_str(),
                r.for_duration.as_deref().unwrap_or(""),
                r.labels.get("severity").map_or("", String::as_str),
            )
        })
        .collect();
    let want: Vec<(&str, &str, &str)> = MIXIN.iter().map(|(n, f, s, _)| (*n, *f, *s)).collect();
    assert_eq!(
        got, want,
        "group etcd must hold the mixin's 15 alerts in order"
    );
    for (rule, (name, _, _, ending)) in etcd.iter().zip(MIXIN) {
        assert!(
            normalized(&rule.expr).ends_with(ending),
            "{name}: expression must end with `{ending}` as the mixin's does: {}",
            rule.expr
        );
    }
    for rule in rules.iter().filter(|r| r.group != "etcd") {
        assert!(
            rule.alert.starts_with("oxetcd"),
            "{}: alerts outside the mixin group are named oxetcd…",
            rule.alert
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The unit tests cover every alert
// ---------------------------------------------------------------------------------------------

#[test]
fn every_alert_has_a_firing_and_a_silent_unit_test() {
    // alert name -> (cases where it fires, cases where it is expected silent)
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for file in test_files() {
        let doc = parse_yaml(&read(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let tests = doc
            .get("tests")
            .and_then(Yaml::as_seq)
            .unwrap_or_else(|| panic!("{file}: no `tests:` list"));
        for test in tests {
            let Some(alert_tests) = test.get("alert_rule_test").and_then(Yaml::as_seq) else {
                continue;
            };
            for case in alert_tests {
                let name = case
                    .get("alertname")
                    .and_then(Yaml::as_str)
                    .unwrap_or_else(|| panic!("{file}: alert_rule_test without alertname"));
                let fires = case
                    .get("exp_alerts")
                    .and_then(Yaml::as_seq)
                    .is_some_and(|alerts| !alerts.is_empty());
                let entry = cases.entry(name.to_owned()).or_default();
                if fires {
                    entry.0 += 1;
                } else {
                    entry.1 += 1;
                }
            }
        }
    }
    let alerts: BTreeSet<String> = rules().into_iter().map(|r| r.alert).collect();
    for alert in &alerts {
        let (firing, silent) = cases.get(alert).copied().unwrap_or_default();
        assert!(firing > 0, "{alert}: no promtool test case where it fires");
        assert!(
            silent > 0,
            "{alert}: no promtool test case where it stays silent"
        );
    }
    for name in cases.keys() {
        assert!(
            alerts.contains(name),
            "alerts/tests name `{name}`, which is no alert in alerts/"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A block-style YAML reader, enough for rule and promtool test files
// ---------------------------------------------------------------------------------------------

/// A YAML value. Mappings keep their order.
#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    Null,
    Str(String),
    Seq(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A sequence; `null` (a key with nothing after it) reads as the empty sequence.
    fn as_seq(&self) -> Option<&[Yaml]> {
        match self {
            Yaml::Seq(items) => Some(items),
            Yaml::Null => Some(&[]),
            _ => None,
        }
    }
}

struct Line {
    /// 1-based line number, for errors.
    number: usize,
    indent: usize,
    /// The line without its indentation.
    text: String,
}

/// Reads block-style YAML: mappings, `- ` sequences, plain, 'single' and "double" quoted scalars,
/// `|`/`>` block scalars, comments, and the empty flow collections `[]` and `{}`. Anything else
/// (anchors, tags, other flow collections, multi-line quoted scalars) is an error, so a rule file
/// the reader cannot follow fails the test instead of being skipped.
fn parse_yaml(source: &str) -> Result<Yaml, String> {
    let mut lines: Vec<Line> = source
        .lines()
        .enumerate()
        .map(|(i, raw)| {
            let indent = raw.len() - raw.trim_start_matches(' ').len();
            Line {
                number: i + 1,
                indent,
                text: raw[indent..].trim_end().to_owned(),
            }
        })
        .collect();
    if let Some(line) = lines.iter().find(|l| l.text.starts_with('\t')) {
        return Err(format!(
            "line {}: tabs are not allowed in indentation",
            line.number
        ));
    }
    let mut pos = 0;
    let doc = match next_content(&lines, pos) {
        None => Yaml::Null,
        Some(first) => {
            let indent = lines[first].indent;
            parse_node(&mut lines, &mut pos, indent)?
        }
    };
    if let Some(rest) = next_content(&lines, pos) {
        return Err(format!(
            "line {}: unexpected indentation or content: {}",
            lines[rest].number, lines[rest].text
        ));
    }
    Ok(doc)
}

fn is_skippable(line: &Line) -> bool {
    line.text.is_empty() || line.text.starts_with('#') || line.text == "---"
}

/// Index of the next line that is neither blank nor a comment, from `pos` on.
fn next_content(lines: &[Line], mut pos: usize) -> Option<usize> {
    while pos < lines.len() {
        if !is_skippable(&lines[pos]) {
            return Some(pos);
        }
        pos += 1;
    }
    None
}

fn is_seq_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// Parses the mapping or sequence whose lines start at column `indent`.
fn parse_node(lines: &mut [Line], pos: &mut usize, indent: usize) -> Result<Yaml, String> {
    let Some(first) = next_content(lines, *pos) else {
        return Ok(Yaml::Null);
    };
    if is_seq_item(&lines[first].text) {
        parse_seq(lines, pos, indent)
    } else {
        parse_map(lines, pos, indent)
    }
}

/// Splits `key: value` / `key:`; None when the text is not a mapping entry.
fn split_key(text: &str) -> Option<(&str, &str)> {
    if text.starts_with(['\'', '"', '[', '{', '|', '>']) {
        return None;
    }
    if let Some(key) = text.strip_suffix(':')
        && !key.contains(": ")
    {
        return Some((key.trim(), ""));
    }
    let (key, value) = text.split_once(": ")?;
    Some((key.trim(), value.trim()))
}

fn parse_map(lines: &mut [Line], pos: &mut usize, indent: usize) -> Result<Yaml, String> {
    let mut entries: Vec<(String, Yaml)> = Vec::new();
    while let Some(i) = next_content(lines, *pos) {
        let line = &lines[i];
        if line.indent < indent {
            break;
        }
        if line.indent > indent {
            return Err(format!(
                "line {}: unexpected indentation: {}",
                line.number, line.text
            ));
        }
        if is_seq_item(&line.text) {
            break;
        }
        let number = line.number;
        let (key, rest) = split_key(&line.text)
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .ok_or_else(|| format!("line {number}: expected `key: value`: {}", line.text))?;
        if entries.iter().any(|(k, _)| *k == key) {
            return Err(format!("line {number}: duplicate key `{key}`"));
        }
        *pos = i + 1;
        let value = parse_value(lines, pos, &rest, indent, number, true)?;
        entries.push((key, value));
    }
    Ok(Yaml::Map(entries))
}

fn parse_seq(lines: &mut [Line], pos: &mut usize, indent: usize) -> Result<Yaml, String> {
    let mut items = Vec::new();
    while let Some(i) = next_content(lines, *pos) {
        let line = &lines[i];
        if line.indent != indent || !is_seq_item(&line.text) {
            if line.indent > indent {
                return Err(format!(
                    "line {}: unexpected indentation: {}",
                    line.number, line.text
                ));
            }
            break;
        }
        let number = line.number;
        let after_dash = line.text[1..].to_owned();
        let rest = after_dash.trim_start();
        if rest.is_empty() {
            *pos = i + 1;
            items.push(parse_value(lines, pos, "", indent, number, false)?);
        } else if split_key(rest).is_some() {
            // `- key: value` opens a mapping whose keys sit where `key` does.
            let key_indent = indent + 1 + (after_dash.len() - rest.len());
            lines[i].indent = key_indent;
            lines[i].text = rest.to_owned();
            *pos = i;
            items.push(parse_map(lines, pos, key_indent)?);
        } else {
            *pos = i + 1;
            let rest = rest.to_owned();
            items.push(parse_value(lines, pos, &rest, indent, number, false)?);
        }
    }
    Ok(Yaml::Seq(items))
}

/// The value after `key:` or `- ` on line `number` whose owner sits at column `indent`. With
/// `in_map`, a sequence may start at the key's own column (`key:\n- item`).
fn parse_value(
    lines: &mut [Line],
    pos: &mut usize,
    rest: &str,
    indent: usize,
    number: usize,
    in_map: bool,
) -> Result<Yaml, String> {
    if rest.is_empty() || rest.starts_with('#') {
        let Some(next) = next_content(lines, *pos) else {
            return Ok(Yaml::Null);
        };
        let child_indent = lines[next].indent;
        if child_indent > indent {
            return parse_node(lines, pos, child_indent);
        }
        if in_map && child_indent == indent && is_seq_item(&lines[next].text) {
            return parse_seq(lines, pos, indent);
        }
        return Ok(Yaml::Null);
    }
    if let Some(header) = rest
        .strip_prefix('|')
        .map(|h| ('|', h))
        .or_else(|| rest.strip_prefix('>').map(|h| ('>', h)))
    {
        return block_scalar(lines, pos, header.0, header.1.trim(), indent, number);
    }
    match rest {
        "[]" => return Ok(Yaml::Seq(Vec::new())),
        "{}" => return Ok(Yaml::Map(Vec::new())),
        _ => {}
    }
    if let Some(body) = rest.strip_prefix('\'') {
        let end = closing_single_quote(body)
            .ok_or_else(|| format!("line {number}: unterminated single-quoted string"))?;
        trailing_ok(&body[end + 1..], number)?;
        return Ok(Yaml::Str(body[..end].replace("''", "'")));
    }
    if let Some(body) = rest.strip_prefix('"') {
        let (text, used) = double_quoted(body)
            .ok_or_else(|| format!("line {number}: unterminated double-quoted string"))?;
        trailing_ok(&body[used..], number)?;
        return Ok(Yaml::Str(text));
    }
    if rest.starts_with(['[', '{', '&', '*', '!']) {
        return Err(format!(
            "line {number}: flow collections, anchors and tags are not supported here: {rest}"
        ));
    }
    let plain = match rest.find(" #") {
        Some(at) => rest[..at].trim_end(),
        None => rest,
    };
    if let Some(next) = next_content(lines, *pos) {
        let next_line = &lines[next];
        if next_line.indent > indent
            && split_key(&next_line.text).is_none()
            && !is_seq_item(&next_line.text)
        {
            return Err(format!(
                "line {}: multi-line plain scalars are not supported; use a `|-` block",
                next_line.number
            ));
        }
    }
    Ok(Yaml::Str(plain.to_owned()))
}

fn trailing_ok(after: &str, number: usize) -> Result<(), String> {
    let after = after.trim();
    if after.is_empty() || after.starts_with('#') {
        Ok(())
    } else {
        Err(format!(
            "line {number}: text after a quoted string: {after}"
        ))
    }
}

/// Byte index of the quote closing a single-quoted body (`''` is an escaped quote).
fn closing_single_quote(body: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            if bytes.get(i + 1) == Some(&b'\'') {
                i += 2;
                continue;
            }
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The unescaped text of a double-quoted body and the bytes used including the closing quote.
fn double_quoted(body: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, i + 1)),
            '\\' => {
                let (_, escaped) = chars.next()?;
                out.push(match escaped {
                    'n' => '\n',
                    't' => '\t',
                    '0' => '\0',
                    other => other,
                });
            }
            c => out.push(c),
        }
    }
    None
}

/// A `|` (literal) or `>` (folded) block scalar whose lines are indented past `indent`.
fn block_scalar(
    lines: &mut [Line],
    pos: &mut usize,
    style: char,
    header: &str,
    indent: usize,
    number: usize,
) -> Result<Yaml, String> {
    let header = match header.find('#') {
        Some(at) => header[..at].trim(),
        None => header,
    };
    let chomp = match header {
        "" => ' ',
        "-" => '-',
        "+" => '+',
        other => {
            return Err(format!(
                "line {number}: block scalar header `{style}{other}` is not supported"
            ));
        }
    };
    let mut body: Vec<&Line> = Vec::new();
    let mut end = *pos;
    while end < lines.len() {
        let line = &lines[end];
        if !line.text.is_empty() && line.indent <= indent {
            break;
        }
        body.push(line);
        end += 1;
    }
    let block_indent = body
        .iter()
        .find(|l| !l.text.is_empty())
        .map(|l| l.indent)
        .ok_or_else(|| format!("line {number}: empty block scalar"))?;
    let mut text_lines: Vec<String> = Vec::new();
    for line in &body {
        if line.text.is_empty() {
            text_lines.push(String::new());
        } else if line.indent < block_indent {
            return Err(format!(
                "line {}: block scalar line less indented than its first line",
                line.number
            ));
        } else {
            text_lines.push(format!(
                "{}{}",
                " ".repeat(line.indent - block_indent),
                line.text
            ));
        }
    }
    // Trailing blank lines belong to the chomping rule, not the content.
    let mut trailing_blank = 0;
    while text_lines.last().is_some_and(String::is_empty) {
        text_lines.pop();
        trailing_blank += 1;
    }
    let mut text = if style == '|' {
        text_lines.join("\n")
    } else {
        text_lines.join(" ")
    };
    match chomp {
        '-' => {}
        '+' => text.push_str(&"\n".repeat(trailing_blank + 1)),
        _ => text.push('\n'),
    }
    *pos = end;
    Ok(Yaml::Str(text))
}

#[test]
fn yaml_reader_handles_the_rule_file_shapes() {
    let doc = parse_yaml(
        "# comment\n\
         groups:\n\
         \x20 - name: g\n\
         \x20   rules:\n\
         \x20     - alert: a\n\
         \x20       expr: |-\n\
         \x20         sum(x)\n\
         \x20           > 1\n\
         \n\
         \x20       for: 5m  # trailing comment\n\
         \x20       labels:\n\
         \x20         severity: warning\n\
         \x20       annotations:\n\
         \x20         summary: 'it''s \"quoted\"'\n\
         \x20         description: \"a \\\"b\\\"\"\n\
         \x20     - alert: b\n\
         \x20       expr: y\n\
         tests:\n\
         - exp_alerts:\n\
         - exp_alerts: []\n",
    )
    .unwrap();
    let groups = doc.get("groups").and_then(Yaml::as_seq).unwrap();
    assert_eq!(groups.len(), 1);
    let rules = groups[0].get("rules").and_then(Yaml::as_seq).unwrap();
    assert_eq!(rules.len(), 2);
    let a = &rules[0];
    assert_eq!(a.get("expr").and_then(Yaml::as_str), Some("sum(x)\n  > 1"));
    assert_eq!(a.get("for").and_then(Yaml::as_str), Some("5m"));
    let annotations = a.get("annotations").unwrap();
    assert_eq!(
        annotations.get("summary").and_then(Yaml::as_str),
        Some("it's \"quoted\"")
    );
    assert_eq!(
        annotations.get("description").and_then(Yaml::as_str),
        Some("a \"b\"")
    );
    assert_eq!(rules[1].get("expr").and_then(Yaml::as_str), Some("y"));
    let tests = doc.get("tests").and_then(Yaml::as_seq).unwrap();
    assert_eq!(tests.len(), 2);
    assert!(tests.iter().all(|t| {
        t.get("exp_alerts")
            .and_then(Yaml::as_seq)
            .is_some_and(|alerts| alerts.is_empty())
    }));

    assert!(
        parse_yaml("a:\n  b: 1\n   c: 2\n").is_err(),
        "bad indentation"
    );
    assert!(parse_yaml("a: {b: 1}\n").is_err(), "flow mapping");
    assert!(parse_yaml("a: 'open\n").is_err(), "unterminated quote");
    assert!(
        parse_yaml("a: b\n  c\n").is_err(),
        "multi-line plain scalar"
    );
}

#[test]
fn slugs_match_github_anchors() {
    assert_eq!(slug("etcdHighFsyncDurations"), "etcdhighfsyncdurations");
    assert_eq!(slug("Before you start"), "before-you-start");
    assert_eq!(
        slug("What `etcdctl defrag` does!"),
        "what-etcdctl-defrag-does"
    );
}
