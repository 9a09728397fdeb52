//! PromQL helpers shared by the dashboard and alert tests: the metric selectors an expression uses
//! (names, label matchers, range windows), and every query of a Grafana dashboard with its template
//! variables filled in so it can be sent to a real Prometheus.
//!
//! This is a lexer, not a PromQL parser: it knows strings, comments, `{...}` matchers, `[...]` windows,
//! label lists after `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`, numbers, Grafana
//! `$variables`, and that an identifier followed by `(` is a function or aggregation. Syntax errors are
//! left to Prometheus (promtool or the live test).

use std::path::Path;

/// PromQL keywords and aggregation operators that are never metric names, even without a `(` after them.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "atan2",
    "sum",
    "avg",
    "count",
    "min",
    "max",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
    "start",
    "end",
    "inf",
    "nan",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// One label matcher inside `{...}`: `job=~"$cluster"` is `("job", "=~", "$cluster")`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    pub label: String,
    pub op: String,
    pub value: String,
}

/// A vector selector: a metric name and its matchers (empty when the name has no `{...}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<Matcher>,
}

impl Selector {
    /// True when the selector has a matcher with exactly this label, operator and value.
    pub fn has_matcher(&self, label: &str, op: &str, value: &str) -> bool {
        self.matchers
            .iter()
            .any(|m| m.label == label && m.op == op && m.value == value)
    }
}

/// What a lexed expression contains: its selectors in order and the text of every `[...]` window
/// (range selectors and subqueries alike, e.g. `$__rate_interval` or `1h` or `30m:1m`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lexed {
    pub selectors: Vec<Selector>,
    pub windows: Vec<String>,
}

/// Metric names used in `expr`, in order of first appearance, without duplicates. Histogram series
/// come back as written (`..._bucket`, `..._sum`, `..._count`).
pub fn metric_names_in(expr: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for selector in lex(expr).selectors {
        if !selector.metric.is_empty() && !names.contains(&selector.metric) {
            names.push(selector.metric);
        }
    }
    names
}

/// Every vector selector in `expr`.
pub fn selectors_in(expr: &str) -> Vec<Selector> {
    lex(expr).selectors
}

/// The text inside every `[...]` of `expr`.
pub fn windows_in(expr: &str) -> Vec<String> {
    lex(expr).windows
}

/// Lexes `expr` into selectors and windows. A `{...}` with no name before it (`{__name__="x"}`) gives
/// a selector named by its `__name__` equality matcher, or an empty name.
pub fn lex(expr: &str) -> Lexed {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Lexed::default();
    // A metric name whose `{...}` may still follow (only whitespace seen since).
    let mut pending: Option<String> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        match c {
            '"' | '\'' | '`' => {
                flush(&mut pending, &mut out);
                i = skip_string(&chars, i);
            }
            '#' => {
                flush(&mut pending, &mut out);
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '{' => {
                let close = matching(&chars, i, '{', '}');
                let matchers = parse_matchers(&chars[i + 1..close]);
                let metric = pending.take().unwrap_or_else(|| {
                    matchers
                        .iter()
                        .find(|m| m.label == "__name__" && m.op == "=")
                        .map(|m| m.value.clone())
                        .unwrap_or_default()
                });
                out.selectors.push(Selector { metric, matchers });
                i = close + 1;
            }
            '[' => {
                flush(&mut pending, &mut out);
                let close = matching(&chars, i, '[', ']');
                out.windows.push(
                    chars[i + 1..close]
                        .iter()
                        .collect::<String>()
                        .trim()
                        .to_string(),
                );
                i = close + 1;
            }
            '$' => {
                flush(&mut pending, &mut out);
                i = skip_variable(&chars, i);
            }
            _ if c.is_ascii_digit() || (c == '.' && next_is_digit(&chars, i)) => {
                flush(&mut pending, &mut out);
                i = skip_number(&chars, i);
            }
            _ if is_ident_start(c) => {
                flush(&mut pending, &mut out);
                let start = i;
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = next_non_space(&chars, i);
                let lower = word.to_ascii_lowercase();
                if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                    if let Some(open) = next.filter(|&j| chars[j] == '(') {
                        i = matching(&chars, open, '(', ')') + 1;
                    }
                } else if KEYWORDS.contains(&lower.as_str()) {
                    // Not a metric; `offset 5m` is handled by the number branch.
                } else if next.is_some_and(|j| chars[j] == '(') {
                    // A function call.
                } else {
                    pending = Some(word);
                }
            }
            _ => {
                flush(&mut pending, &mut out);
                i += 1;
            }
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// A metric name followed by something other than `{`: a selector without matchers.
fn flush(pending: &mut Option<String>, out: &mut Lexed) {
    if let Some(metric) = pending.take() {
        out.selectors.push(Selector {
            metric,
            matchers: Vec::new(),
        });
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn next_is_digit(chars: &[char], i: usize) -> bool {
    chars.get(i + 1).is_some_and(|c| c.is_ascii_digit())
}

fn next_non_space(chars: &[char], mut i: usize) -> Option<usize> {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    (i < chars.len()).then_some(i)
}

/// The operands of `expr`'s top-level comparison (`== != > < >= <=`) and set (`and or unless`)
/// operators, numeric literals left out: what an alert compares with its thresholds. An
/// expression without such operators is its own only operand. `bool` and vector-matching
/// modifiers after an operator are skipped.
pub fn operands(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
            continue;
        }
        if depth == 0
            && let Some(len) = operator_len(&chars, i)
        {
            parts.push(chars[start..i].iter().collect::<String>());
            i = skip_modifiers(&chars, i + len);
            start = i;
            continue;
        }
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ if is_ident_char(c) => {
                // Whole words, so `or` inside `grpc_code` or `error` is never an operator.
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(chars[start..].iter().collect::<String>());
    parts
        .into_iter()
        .map(|part| part.trim().to_string())
        .filter(|part| !part.is_empty() && part.parse::<f64>().is_err())
        .collect()
}

/// Length of the comparison or set operator starting at `i`, if one does.
fn operator_len(chars: &[char], i: usize) -> Option<usize> {
    let next = chars.get(i + 1).copied();
    match chars[i] {
        '=' | '!' if next == Some('=') => Some(2),
        '>' | '<' if next == Some('=') => Some(2),
        '>' | '<' => Some(1),
        c if is_ident_char(c) => {
            let word = word_at(chars, i);
            matches!(word.as_str(), "and" | "or" | "unless").then_some(word.len())
        }
        _ => None,
    }
}

/// Index past the whitespace, `bool`, `on(...)`/`ignoring(...)` and `group_left`/`group_right`
/// (with optional label list) that may follow a binary operator.
fn skip_modifiers(chars: &[char], mut i: usize) -> usize {
    loop {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let word = word_at(chars, i);
        match word.as_str() {
            "bool" | "on" | "ignoring" | "group_left" | "group_right" => {
                i += word.len();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                if word != "bool" && chars.get(j) == Some(&'(') {
                    while j < chars.len() && chars[j] != ')' {
                        j += 1;
                    }
                    i = j + 1;
                }
            }
            _ => return i,
        }
    }
}

fn word_at(chars: &[char], i: usize) -> String {
    chars[i.min(chars.len())..]
        .iter()
        .take_while(|c| is_ident_char(**c))
        .collect()
}

/// Index just past the string literal opening at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == '\\' && quote != '`' {
            i += 2;
            continue;
        }
        if chars[i] == quote {
            return i + 1;
        }
        i += 1;
    }
    chars.len()
}

/// Index just past a number or duration (`0.99`, `1e9`, `0x1F`, `5m`, `1h30m`).
fn skip_number(chars: &[char], start: usize) -> usize {
    let mut i = start;
    while i < chars.len() {
        let c = chars[i];
        let part_of_number = c.is_ascii_alphanumeric()
            || c == '.'
            || c == '_'
            || ((c == '+' || c == '-')
                && matches!(chars[i - 1], 'e' | 'E')
                && !is_hex(chars, start));
        if !part_of_number {
            break;
        }
        i += 1;
    }
    i
}

fn is_hex(chars: &[char], start: usize) -> bool {
    chars[start] == '0' && matches!(chars.get(start + 1), Some('x' | 'X'))
}

/// Index just past a Grafana variable: `$name` or `${name}` / `${name:format}`.
fn skip_variable(chars: &[char], start: usize) -> usize {
    let mut i = start + 1;
    if chars.get(i) == Some(&'{') {
        while i < chars.len() && chars[i] != '}' {
            i += 1;
        }
        return (i + 1).min(chars.len());
    }
    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
        i += 1;
    }
    i
}

/// Index of the bracket closing the one at `open`, skipping strings; the end of input if unclosed.
fn matching(chars: &[char], open: usize, open_c: char, close_c: char) -> usize {
    let mut depth = 0usize;
    let mut i = open;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(chars, i);
            continue;
        }
        if c == open_c {
            depth += 1;
        } else if c == close_c {
            depth -= 1;
            if depth == 0 {
                return i;
            }
        }
        i += 1;
    }
    chars.len()
}

/// Parses the inside of `{...}`: `label op "value"` separated by commas.
fn parse_matchers(chars: &[char]) -> Vec<Matcher> {
    let mut matchers = Vec::new();
    let mut i = 0;
    loop {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        if i >= chars.len() {
            return matchers;
        }
        let start = i;
        while i < chars.len() && is_ident_char(chars[i]) {
            i += 1;
        }
        let label: String = chars[start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let op_start = i;
        while i < chars.len() && matches!(chars[i], '=' | '!' | '~') {
            i += 1;
        }
        let op: String = chars[op_start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let value = if i < chars.len() && matches!(chars[i], '"' | '\'' | '`') {
            let end = skip_string(chars, i);
            let inner: String = chars[i + 1..end.saturating_sub(1).max(i + 1)]
                .iter()
                .collect();
            i = end;
            unescape(&inner)
        } else {
            String::new()
        };
        if label.is_empty() && op.is_empty() {
            // Not a matcher (malformed input); skip one character so the loop always advances.
            i += 1;
            continue;
        }
        matchers.push(Matcher { label, op, value });
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Values for Grafana's variables when a dashboard query is sent straight to Prometheus: any job with
/// "etcd" in its name, every instance, a 1-minute rate window, a 5-minute dashboard range.
pub const DEFAULT_VARIABLES: &[(&str, &str)] = &[
    ("cluster", ".*etcd.*"),
    ("instance", ".+"),
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__interval_ms", "15000"),
    ("__range", "5m"),
    ("__range_s", "300"),
    ("__range_ms", "300000"),
];

/// Replaces Grafana variables (`$name`, `${name}`, `${name:format}`) in `expr` from `variables`.
/// Panics on a variable it has no value for, so a live test never sends a literal `$` to Prometheus.
pub fn substitute(expr: &str, variables: &[(&str, &str)]) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::with_capacity(expr.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let end = skip_variable(&chars, i);
        let raw: String = chars[i + 1..end].iter().collect();
        let name = raw
            .trim_start_matches('{')
            .trim_end_matches('}')
            .split(':')
            .next()
            .unwrap_or_default();
        let value = variables
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no value for Grafana variable ${name} in {expr}"));
        out.push_str(value);
        i = end;
    }
    out
}

/// Every non-empty `expr` of every panel in the dashboard at `path` (rows' nested panels included), as
/// (panel title, query) with the variables replaced by [`DEFAULT_VARIABLES`].
pub fn dashboard_exprs(path: impl AsRef<Path>) -> Vec<(String, String)> {
    dashboard_exprs_with(path, DEFAULT_VARIABLES)
}

/// [`dashboard_exprs`] with caller-chosen variable values (e.g. `("cluster", "oxetcd")`); names not
/// given here fall back to [`DEFAULT_VARIABLES`].
pub fn dashboard_exprs_with(
    path: impl AsRef<Path>,
    variables: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut merged: Vec<(&str, &str)> = variables.to_vec();
    for default in DEFAULT_VARIABLES {
        if !merged.iter().any(|(n, _)| *n == default.0) {
            merged.push(*default);
        }
    }
    dashboard_raw_exprs(path)
        .into_iter()
        .map(|(title, expr)| {
            let filled = substitute(&expr, &merged);
            (title, filled)
        })
        .collect()
}

/// Every non-empty `expr` of the dashboard at `path` as written (variables not replaced).
pub fn dashboard_raw_exprs(path: impl AsRef<Path>) -> Vec<(String, String)> {
    let dashboard = read_dashboard(path.as_ref());
    let mut out = Vec::new();
    for panel in all_panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str().filter(|e| !e.trim().is_empty()) {
                out.push((title.clone(), expr.to_string()));
            }
        }
    }
    out
}

/// The dashboard at `path`, parsed; panics with the path on a read or JSON error.
pub fn read_dashboard(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading dashboard {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("dashboard {} is not valid JSON: {e}", path.display()))
}

/// Top-level panels followed by the panels nested in (collapsed) rows.
pub fn all_panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        for nested in panel["panels"].as_array().into_iter().flatten() {
            out.push(nested);
        }
    }
    out
}

/// Splits Grafana's `label_values(selector, label)` variable query into its selector and label;
/// `label_values(label)` gives an empty selector. None for any other query.
pub fn label_values_query(query: &str) -> Option<(String, String)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let chars: Vec<char> = inner.chars().collect();
    // The label is after the last comma outside braces and strings.
    let mut depth = 0usize;
    let mut split = None;
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(&chars, i);
                continue;
            }
            '{' | '(' | '[' => depth += 1,
            '}' | ')' | ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => split = Some(i),
            _ => {}
        }
        i += 1;
    }
    Some(match split {
        Some(at) => (
            chars[..at].iter().collect::<String>().trim().to_string(),
            chars[at + 1..]
                .iter()
                .collect::<String>()
                .trim()
                .to_string(),
        ),
        None => (String::new(), inner.trim().to_string()),
    })
}

#[cfg(test)]
mod operand_tests {
    use super::*;

    #[test]
    fn operands_leave_out_thresholds_and_keep_compared_series() {
        let cases: &[(&str, &[&str])] = &[
            (
                r#"etcd_server_has_leader{job=~".*etcd.*"} == 0"#,
                &[r#"etcd_server_has_leader{job=~".*etcd.*"}"#],
            ),
            (
                r#"max without (endpoint) (sum without (instance) (up == bool 0) or count(x > 0.01)) > 0"#,
                &[
                    r#"max without (endpoint) (sum without (instance) (up == bool 0) or count(x > 0.01))"#,
                ],
            ),
            (
                r#"sum(up == bool 1) without (instance) < ((count(up) without (instance) + 1) / 2)"#,
                &[
                    r#"sum(up == bool 1) without (instance)"#,
                    r#"((count(up) without (instance) + 1) / 2)"#,
                ],
            ),
            (
                r#"(a{x="or"} / b) < 0.5 and c{grpc_code!="OK"} > 104857600"#,
                &[r#"(a{x="or"} / b)"#, r#"c{grpc_code!="OK"}"#],
            ),
            (
                "predict_linear(d[4h], 4 * 60 * 60) > on (instance) group_left () q",
                &["predict_linear(d[4h], 4 * 60 * 60)", "q"],
            ),
            (
                "increase((m or 0 * absent(m))[15m:1m]) >= 4",
                &["increase((m or 0 * absent(m))[15m:1m])"],
            ),
            ("rate(errors_total[5m])", &["rate(errors_total[5m])"]),
        ];
        for (expr, expected) in cases {
            assert_eq!(operands(expr), *expected, "operands of {expr}");
        }
    }
}
