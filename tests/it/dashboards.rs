//! The Grafana dashboards in `dashboards/`: importable as they are (schema, stable uids, the
//! `datasource`/`cluster`/`instance` variables), every panel on the `${datasource}` variable with a
//! place on the grid and a unit, every query filtered by `$cluster` and `$instance`, rate windows on
//! `$__rate_interval`, and every metric one the server exports. No server is started here; the live
//! check that each query returns data against a running cluster reuses `common/promql.rs`.

use crate::common::metric_names;
use crate::common::promql;

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use metric_names::is_exported;
use promql::{
    all_panels, dashboard_exprs, dashboard_raw_exprs, label_values_query, lex, metric_names_in,
    read_dashboard, selectors_in, substitute, windows_in,
};

/// The dashboards this crate ships, by file name under `dashboards/`.
const DASHBOARDS: &[&str] = &[
    "oxetcd-overview.json",
    "oxetcd-disk.json",
    "oxetcd-raft.json",
    "oxetcd-clients.json",
];

/// Panel types the dashboards may use (Grafana 10 core panels; no graph/singlestat).
const PANEL_TYPES: &[&str] = &["row", "stat", "timeseries", "heatmap", "gauge", "bargauge"];

/// Range windows other than Grafana's own: (dashboard, panel title, window, why).
const FIXED_WINDOWS: &[(&str, &str, &str, &str)] = &[(
    "oxetcd-disk.json",
    "Data dir full in",
    "1h",
    "the fill-rate estimate needs an hour of samples to ignore short bursts",
)];

/// Grafana's range variables: the panel's rate window, and the whole dashboard range for totals.
const GRAFANA_WINDOWS: &[&str] = &["$__rate_interval", "$__range"];

const DATASOURCE_UID: &str = "${datasource}";
const GRID_COLUMNS: u64 = 24;

fn dashboards_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

/// (file name, parsed dashboard) for every shipped dashboard.
fn dashboards() -> Vec<(&'static str, Value)> {
    DASHBOARDS
        .iter()
        .map(|name| (*name, read_dashboard(&dashboards_dir().join(name))))
        .collect()
}

/// Non-row panels of a dashboard.
fn data_panels(dashboard: &Value) -> Vec<&Value> {
    all_panels(dashboard)
        .into_iter()
        .filter(|p| p["type"] != "row")
        .collect()
}

fn variable<'a>(dashboard: &'a Value, name: &str) -> Option<&'a Value> {
    dashboard["templating"]["list"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
}

/// A query variable's query: a plain string, or Grafana 10's `{"query": "..."}` object.
fn variable_query(var: &Value) -> &str {
    var["query"]
        .as_str()
        .or_else(|| var["query"]["query"].as_str())
        .unwrap_or_default()
}

#[test]
fn the_dashboards_directory_holds_exactly_the_shipped_dashboards() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(dashboards_dir())
        .expect("dashboards/ exists")
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".json"))
        .collect();
    let expected: BTreeSet<String> = DASHBOARDS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        on_disk, expected,
        "dashboards/*.json and DASHBOARDS disagree"
    );
}

#[test]
fn dashboards_are_importable_as_they_are() {
    let mut uids = HashSet::new();
    let mut titles = HashSet::new();
    for (file, d) in dashboards() {
        let uid = d["uid"].as_str().unwrap_or_default();
        assert!(
            !uid.is_empty() && uid.len() <= 40,
            "{file}: uid {uid:?} must be 1..=40 chars"
        );
        assert!(
            uids.insert(uid.to_string()),
            "{file}: uid {uid} is not unique"
        );
        assert_eq!(
            format!("{uid}.json"),
            file,
            "{file}: uid and file name should match"
        );

        let title = d["title"].as_str().unwrap_or_default();
        assert!(
            title.starts_with("oxetcd / "),
            "{file}: title {title:?} should start with \"oxetcd / \""
        );
        assert!(
            titles.insert(title.to_string()),
            "{file}: title {title} is not unique"
        );

        let schema = d["schemaVersion"].as_u64().unwrap_or(0);
        assert!(schema >= 36, "{file}: schemaVersion {schema} is below 36");
        assert!(
            d["tags"]
                .as_array()
                .is_some_and(|tags| tags.contains(&json!("oxetcd"))),
            "{file}: tags must include \"oxetcd\""
        );
        assert!(
            d.get("__inputs").is_none() && d.get("__requires").is_none(),
            "{file}: exported-for-sharing placeholders need an import step; use the datasource variable"
        );
        let text = serde_json::to_string(&d).expect("a parsed value serializes");
        assert!(
            !text.contains("${DS_"),
            "{file}: ${{DS_...}} placeholders need an import step"
        );
        assert!(
            d.get("id").is_none_or(Value::is_null),
            "{file}: a fixed numeric id clashes on import"
        );
    }
}

#[test]
fn dashboards_have_the_datasource_cluster_and_instance_variables() {
    for (file, d) in dashboards() {
        let datasource =
            variable(&d, "datasource").unwrap_or_else(|| panic!("{file}: no datasource variable"));
        assert_eq!(
            datasource["type"], "datasource",
            "{file}: datasource variable type"
        );
        assert_eq!(
            datasource["query"], "prometheus",
            "{file}: datasource variable query"
        );

        let cluster =
            variable(&d, "cluster").unwrap_or_else(|| panic!("{file}: no cluster variable"));
        assert_eq!(cluster["type"], "query", "{file}: cluster variable type");
        assert_eq!(
            variable_query(cluster),
            "label_values(etcd_server_has_leader, job)",
            "{file}: cluster variable query"
        );

        let instance =
            variable(&d, "instance").unwrap_or_else(|| panic!("{file}: no instance variable"));
        assert_eq!(instance["type"], "query", "{file}: instance variable type");
        assert_eq!(
            variable_query(instance),
            r#"label_values(etcd_server_has_leader{job=~"$cluster"}, instance)"#,
            "{file}: instance variable query"
        );
        assert_eq!(
            instance["multi"], true,
            "{file}: instance must be multi-value"
        );
        assert_eq!(
            instance["includeAll"], true,
            "{file}: instance must offer All"
        );

        for var in [cluster, instance] {
            assert_eq!(
                var["datasource"]["uid"], DATASOURCE_UID,
                "{file}: variable {} must query ${{datasource}}",
                var["name"]
            );
            let (selector, _label) = label_values_query(variable_query(var))
                .unwrap_or_else(|| panic!("{file}: {} is not label_values(...)", var["name"]));
            for metric in metric_names_in(&selector) {
                assert!(
                    is_exported(&metric),
                    "{file}: variable {} uses {metric}, which the server does not export",
                    var["name"]
                );
            }
        }
    }
}

#[test]
fn every_panel_has_a_datasource_a_place_and_a_unit() {
    for (file, d) in dashboards() {
        let mut ids = HashSet::new();
        let mut boxes: Vec<(String, u64, u64, u64, u64)> = Vec::new();
        for panel in all_panels(&d) {
            let title = panel["title"].as_str().unwrap_or_default();
            let kind = panel["type"].as_str().unwrap_or_default();
            let at = format!("{file}: panel {title:?}");
            assert!(!title.is_empty(), "{file}: a panel has no title");
            assert!(PANEL_TYPES.contains(&kind), "{at}: panel type {kind:?}");
            let id = panel["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{at}: no numeric id"));
            assert!(ids.insert(id), "{at}: id {id} is not unique");
            assert_eq!(
                panel["datasource"],
                json!({"type": "prometheus", "uid": DATASOURCE_UID}),
                "{at}: datasource"
            );

            let grid = &panel["gridPos"];
            let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| {
                grid[k]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{at}: gridPos.{k}"))
            });
            assert!(h > 0 && w > 0, "{at}: empty gridPos");
            assert!(x + w <= GRID_COLUMNS, "{at}: wider than the grid");
            for (other, ox, oy, ow, oh) in &boxes {
                let overlaps = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
                assert!(!overlaps, "{at}: overlaps panel {other:?}");
            }
            boxes.push((title.to_string(), x, y, w, h));

            if kind == "row" {
                continue;
            }
            assert!(
                panel["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{at}: no description"
            );
            assert!(
                panel["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{at}: no fieldConfig.defaults.unit"
            );
            let targets = panel["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            assert!(!targets.is_empty(), "{at}: no targets");
            let mut ref_ids = HashSet::new();
            for target in targets {
                let ref_id = target["refId"].as_str().unwrap_or_default();
                assert!(
                    !ref_id.is_empty() && ref_ids.insert(ref_id),
                    "{at}: refId {ref_id:?} missing or repeated"
                );
                assert!(
                    target
                        .get("datasource")
                        .is_none_or(|ds| ds["uid"] == DATASOURCE_UID),
                    "{at}: target {ref_id} names another datasource"
                );
                assert!(
                    target["expr"]
                        .as_str()
                        .is_some_and(|e| !e.trim().is_empty()),
                    "{at}: target {ref_id} has no expr"
                );
            }
        }
    }
}

#[test]
fn every_query_is_filtered_by_cluster_and_instance() {
    for (file, d) in dashboards() {
        for panel in data_panels(&d) {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default();
                let selectors = selectors_in(expr);
                assert!(
                    !selectors.is_empty(),
                    "{file}: {title:?}: no selector in {expr}"
                );
                for s in selectors {
                    assert!(
                        s.has_matcher("job", "=~", "$cluster")
                            && s.has_matcher("instance", "=~", "$instance"),
                        "{file}: {title:?}: {} lacks job=~\"$cluster\", instance=~\"$instance\" in {expr}",
                        s.metric
                    );
                }
            }
        }
    }
}

#[test]
fn range_windows_follow_the_dashboard() {
    for (file, d) in dashboards() {
        for panel in data_panels(&d) {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default();
                for window in windows_in(expr) {
                    let allowed = GRAFANA_WINDOWS.contains(&window.as_str())
                        || FIXED_WINDOWS
                            .iter()
                            .any(|(f, t, w, _)| *f == file && *t == title && *w == window);
                    assert!(
                        allowed,
                        "{file}: {title:?}: window [{window}] should be $__rate_interval \
                         (or listed in FIXED_WINDOWS with a reason): {expr}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_metric_in_every_query_is_exported() {
    let mut used = BTreeSet::new();
    for (file, d) in dashboards() {
        for panel in data_panels(&d) {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default();
                for metric in metric_names_in(expr) {
                    assert!(
                        is_exported(&metric),
                        "{file}: {title:?} queries {metric}, which the server does not export: {expr}"
                    );
                    used.insert(metric);
                }
            }
        }
    }
    // The lexer found the histograms' series, not just plain gauges: the suffix rule is exercised.
    for series in [
        "etcd_disk_wal_fsync_duration_seconds_bucket",
        "etcd_disk_backend_commit_duration_seconds_count",
        "oxetcd_server_leaderless_duration_seconds_sum",
        "grpc_server_handling_seconds_bucket",
    ] {
        assert!(
            used.contains(series),
            "expected some panel to query {series}"
        );
    }
}

#[test]
fn heatmaps_plot_histogram_buckets() {
    let mut heatmaps = 0;
    for (file, d) in dashboards() {
        for panel in data_panels(&d)
            .into_iter()
            .filter(|p| p["type"] == "heatmap")
        {
            heatmaps += 1;
            let title = panel["title"].as_str().unwrap_or_default();
            assert_eq!(
                panel["options"]["calculate"], false,
                "{file}: {title:?}: buckets come from Prometheus, not Grafana"
            );
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default();
                assert_eq!(
                    target["format"], "heatmap",
                    "{file}: {title:?}: target format"
                );
                assert_eq!(
                    target["legendFormat"], "{{le}}",
                    "{file}: {title:?}: legend"
                );
                assert!(
                    expr.starts_with("sum by (le) (increase(")
                        && metric_names_in(expr).iter().all(|m| m.ends_with("_bucket")),
                    "{file}: {title:?}: expected sum by (le) (increase(<histogram>_bucket...)): {expr}"
                );
            }
        }
    }
    assert!(heatmaps >= 2, "the disk dashboard has two heatmaps");
}

#[test]
fn queries_with_variables_filled_in_are_plain_promql() {
    for file in DASHBOARDS {
        let path = dashboards_dir().join(file);
        let raw = dashboard_raw_exprs(&path);
        let filled = dashboard_exprs(&path);
        assert_eq!(
            raw.len(),
            filled.len(),
            "{file}: one filled query per target"
        );
        assert!(!filled.is_empty(), "{file}: no queries");
        for ((title, raw_expr), (_, expr)) in raw.iter().zip(&filled) {
            assert!(
                !expr.contains('$'),
                "{file}: {title:?}: variable left in {expr}"
            );
            assert!(
                !expr.contains("[$") && expr.contains(".*etcd.*"),
                "{file}: {title:?}: {expr}"
            );
            assert_eq!(
                metric_names_in(raw_expr),
                metric_names_in(expr),
                "{file}: {title:?}: substitution changed the metrics"
            );
        }
    }
}

/// Every query (variables filled in) parses as PromQL: `promtool check rules` on a rule file with one
/// recording rule per query. Skipped when promtool is not installed (`OXETCD_TEST_PROMTOOL` overrides
/// the binary).
#[test]
fn queries_parse_with_promtool() {
    let promtool = std::env::var("OXETCD_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut rules = Vec::new();
    let mut origins = Vec::new();
    for file in DASHBOARDS {
        for (title, expr) in dashboard_exprs(dashboards_dir().join(file)) {
            let record = format!("dashboard_query_{}", rules.len());
            origins.push(format!("{record}: {file}: {title:?}: {expr}"));
            rules.push(json!({"record": record, "expr": expr}));
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dashboard-queries.yml");
    // JSON is YAML, so serde_json writes a rule file promtool reads.
    let doc = json!({"groups": [{"name": "dashboards", "rules": rules}]});
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&doc).expect("serializes"),
    )
    .expect("write rule file");
    let output = match Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&path)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipping: {promtool} not found");
            return;
        }
        Err(e) => panic!("running {promtool}: {e}"),
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Name the panels behind the rules promtool complains about ("dashboard_query_7\"" etc.).
    let culprits: Vec<&String> = origins
        .iter()
        .filter(|o| {
            let record = o.split(':').next().unwrap_or_default();
            report.contains(&format!("\"{record}\""))
        })
        .collect();
    assert!(
        output.status.success(),
        "promtool rejected a dashboard query:\n{report}\n{culprits:#?}"
    );
}

#[test]
fn metric_names_skip_functions_labels_strings_and_windows() {
    let cases: &[(&str, &[&str])] = &[
        ("up", &["up"]),
        (r#"sum(up{job=~"$cluster"})"#, &["up"]),
        (
            r#"histogram_quantile(0.99, sum by (instance, le) (rate(a_seconds_bucket{job=~"x"}[$__rate_interval])))"#,
            &["a_seconds_bucket"],
        ),
        (
            "sum(rate(a_total[5m])) by (grpc_method, le) / ignoring(code) group_left(instance) b",
            &["a_total", "b"],
        ),
        (
            r#"label_replace(c{le="1"}, "dst", "$1", "src", "(.*)") or vector(0)"#,
            &["c"],
        ),
        ("d offset 5m + e @ 1609746000 - 1e-3 * 0x1F", &["d", "e"]),
        (
            "max_over_time(f[30m:1m]) and on (instance) g > bool 2",
            &["f", "g"],
        ),
        ("count_values(\"v\", h) # trailing comment i", &["h"]),
        ("time() - j{a='b'} + k", &["j", "k"]),
        (r#"{__name__="named", job="x"}"#, &["named"]),
        ("sum without (instance) (l) unless m", &["l", "m"]),
        ("rate(n:recorded:rate5m [1m])", &["n:recorded:rate5m"]),
        ("-o + Inf + NaN", &["o"]),
    ];
    for (expr, want) in cases {
        assert_eq!(metric_names_in(expr), *want, "metric names in {expr}");
    }
}

#[test]
fn selectors_and_windows_are_lexed() {
    let lexed = lex(
        r#"rate(a{job=~"$cluster", instance=~"$instance", code!="OK", x=~"a,b}"}[$__rate_interval]) / b [1h]"#,
    );
    assert_eq!(lexed.windows, vec!["$__rate_interval", "1h"]);
    assert_eq!(lexed.selectors.len(), 2);
    let a = &lexed.selectors[0];
    assert_eq!(a.metric, "a");
    assert!(a.has_matcher("job", "=~", "$cluster"));
    assert!(a.has_matcher("instance", "=~", "$instance"));
    assert!(a.has_matcher("code", "!=", "OK"));
    assert!(a.has_matcher("x", "=~", "a,b}"));
    assert_eq!(lexed.selectors[1].metric, "b");
    assert!(lexed.selectors[1].matchers.is_empty());
}

#[test]
fn variables_are_substituted() {
    let vars = &[
        ("cluster", "oxetcd"),
        ("__rate_interval", "1m"),
        ("__range", "5m"),
    ];
    assert_eq!(
        substitute(
            r#"rate(a{job=~"$cluster"}[$__rate_interval]) + b[${__range}] + c{j="${cluster:regex}"}"#,
            vars
        ),
        r#"rate(a{job=~"oxetcd"}[1m]) + b[5m] + c{j="oxetcd"}"#
    );
    assert_eq!(
        label_values_query(r#"label_values(x{job=~"$cluster", a="1,2"}, instance)"#),
        Some((
            r#"x{job=~"$cluster", a="1,2"}"#.to_string(),
            "instance".to_string()
        ))
    );
    assert_eq!(
        label_values_query("label_values(job)"),
        Some((String::new(), "job".to_string()))
    );
    let unknown = std::panic::catch_unwind(|| substitute("a[$__unknown]", vars));
    assert!(
        unknown.is_err(),
        "an unknown variable must not pass through"
    );
}
