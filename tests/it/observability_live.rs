//! Live check of the observability artifacts (issue 4, point 7): a 3-member oxetcd cluster scraped
//! by a real Prometheus (1 s scrape and rule evaluation, the repo's `alerts/*.yaml` loaded) under a
//! small write/read/watch/lease load, after the events some series wait for (an error answer, a
//! leader change, a failed send to a peer). Every query of every dashboard and every alert
//! expression is sent to Prometheus's HTTP API and must parse and return data; the leader change
//! must move the leader-change counter (once per member, as etcd counts it) and the leaderless and
//! election histograms; filling a small backend quota must make `etcdDatabaseQuotaLowSpace` true
//! (and the rule pending); and every metric name a dashboard or an alert uses must be among the
//! names Prometheus scraped.
//!
//! Needs Debian's `prometheus` (`apt-get install prometheus`); `OXETCD_TEST_PROMETHEUS` overrides the
//! binary. Skipped against real etcd (`OXETCD_TEST_BIN`): the dashboards and alerts also use
//! oxetcd's own `oxetcd_*` metrics. Problems are collected through every phase and reported
//! together at the end; what each query returned and the phase timings are printed (`--nocapture`
//! shows them).

use crate::common;
use crate::common::metric_names;
use crate::common::promql;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, GetOptions, PutOptions, WatchOptions};
use serde_json::Value;

use common::cluster::{
    Cluster, ClusterOptions, FAILOVER_DEADLINE, LoadOptions, WriteLoad, error_text, exclusive,
};
use common::proxy::Fault;
use common::{free_port, http_get};
use metric_names::{EXPORTED_METRICS, HISTOGRAM_SUFFIXES, HISTOGRAMS};
use promql::{dashboard_exprs_with, metric_names_in};

/// The Prometheus job scraping the members. The alerts select `job=~".*etcd.*"`, the dashboards
/// `job=~"$cluster"` with `$cluster` set to this.
const JOB: &str = "oxetcd";
const MEMBERS: usize = 3;
/// Prometheus's scrape and rule evaluation interval.
const SCRAPE_INTERVAL: &str = "1s";
/// `--quota-backend-bytes` of the members: small enough to fill within seconds.
const QUOTA_BACKEND_BYTES: u64 = 16 * 1024 * 1024;
/// One value written to fill the quota. Each costs about twice its size on disk (raft log entry
/// and stored value), so the quota is hit after about 16 puts, at over 95% of it.
const FILL_VALUE_BYTES: usize = 512 * 1024;
/// Upper bound on fill puts: twice what the quota holds, so a server that never refuses fails.
const FILL_PUTS_MAX: u64 = 2 * QUOTA_BACKEND_BYTES / FILL_VALUE_BYTES as u64;
/// etcd's refusal of a write over the quota.
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
/// etcd's answer to a read at a revision the store has not reached.
const FUTURE_REVISION: &str = "etcdserver: mvcc: required revision is a future revision";
/// Observation counts of the histograms a leader change must move.
const LEADERLESS_COUNT: &str = "oxetcd_server_leaderless_duration_seconds_count";
const ELECTION_COUNT: &str = "oxetcd_server_election_duration_seconds_count";
/// How long Prometheus gets to start, load the rules and scrape every member.
const PROMETHEUS_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long something the members did gets to show up in Prometheus (many scrapes and rule
/// evaluations at 1 s).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long every member gets to name the new leader after `move-leader`.
const AGREE_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Pause between two sends of a query that did not return data yet (about one scrape).
const REQUERY_INTERVAL: Duration = Duration::from_secs(1);
const PROMETHEUS_SPAWN_ATTEMPTS: usize = 3;
const PROMETHEUS_LOG_TAIL_LINES: usize = 40;
/// Writers in the steady write load, and how many puts they must have acknowledged before the
/// events and queries start.
const WRITE_TASKS: usize = 2;
const WRITES_BEFORE_QUERIES: u64 = 200;
/// Pause between two rounds of the read, watch and lease load.
const SIDE_LOAD_INTERVAL: Duration = Duration::from_millis(250);
/// TTL of the side load's lease; it is kept alive every [`SIDE_LOAD_INTERVAL`].
const LEASE_TTL_S: i64 = 10;
/// Bound on one request of the side load and of the event requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The dashboards this crate ships, by file name under `dashboards/`.
const DASHBOARDS: &[&str] = &[
    "oxetcd-overview.json",
    "oxetcd-disk.json",
    "oxetcd-raft.json",
    "oxetcd-clients.json",
];

/// Dashboard panels whose queries may come back empty here, with why: (dashboard, panel title,
/// reason). They must still parse.
const MAY_BE_EMPTY: &[(&str, &str, &str)] = &[(
    "oxetcd-disk.json",
    "Data dir full in",
    "shows only while the free space of the data dir's filesystem falls (deriv over 1h < 0); that \
     is the whole host filesystem, which other processes move both ways, so not even the quota \
     fill is sure to make it fall. Its series, oxetcd_disk_data_dir_free_bytes, is checked by the \
     \"Free space\" panels",
)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_against_a_live_cluster() {
    if common::running_real_etcd() {
        eprintln!(
            "skipping: the dashboards and alerts use oxetcd_* metrics, which etcd does not export"
        );
        return;
    }
    let _serial = exclusive().await;
    let started = Instant::now();
    let mut problems: Vec<String> = Vec::new();
    let mut timings: Vec<(&str, Duration)> = Vec::new();

    // An https:// metrics URL with an --auto-tls certificate, so the certificate expiry metric
    // (and its alert and panel) have a served certificate to show.
    let mut cluster = Cluster::start_with(
        ClusterOptions::new(MEMBERS)
            .arg("--quota-backend-bytes")
            .arg(&QUOTA_BACKEND_BYTES.to_string())
            .arg("--auto-tls")
            .arg("--listen-metrics-urls")
            .arg("https://127.0.0.1:0"),
    );
    cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    let targets: Vec<String> = (0..MEMBERS)
        .map(|index| instance(&cluster, index))
        .collect();
    let prometheus = Prometheus::start(&targets, &rule_files());
    prometheus.wait_ready();
    prometheus.wait_targets_up(&targets);
    timings.push(("cluster and Prometheus up", started.elapsed()));

    // Load: puts through every member, and reads, a watch stream and a kept-alive lease.
    let phase = Instant::now();
    let writes = WriteLoad::start(LoadOptions {
        endpoints: cluster.endpoints(),
        tasks: WRITE_TASKS,
        prefix: "obs/load/".to_string(),
        max_puts_per_task: 20_000,
        max_duration: Duration::from_secs(120),
        ..LoadOptions::default()
    });
    let side_load = SideLoad::start(&cluster).await;
    if let Err(reason) = writes.wait_for_acks(WRITES_BEFORE_QUERIES, SCRAPE_TIMEOUT) {
        cluster.fail(&format!("write load: {reason}"));
    }

    // Events some panels need: an error answer on every member, a leader change, and a failed
    // send to a peer.
    request_future_revision(&cluster, &mut problems).await;
    leader_change(&mut cluster, &prometheus, &mut problems).await;
    peer_link_failure(&mut cluster, &prometheus, &mut problems).await;
    timings.push(("load, errors and leader change", phase.elapsed()));

    // Every dashboard query, while the load runs.
    let phase = Instant::now();
    let dashboard_queries = dashboard_checks();
    expect_data(
        &prometheus,
        &dashboard_queries,
        SCRAPE_TIMEOUT,
        &mut problems,
    );
    timings.push(("dashboard queries", phase.elapsed()));

    // Fill the quota; etcdDatabaseQuotaLowSpace must become true.
    let phase = Instant::now();
    let report = writes.stop();
    eprintln!(
        "write load: {} puts acknowledged in {:?}, errors {:?}",
        report.acks.len(),
        report.elapsed,
        report.errors
    );
    let rules = prometheus.rules();
    fill_quota(&cluster, &prometheus, &rules, &mut problems).await;
    timings.push(("quota filled, alert pending", phase.elapsed()));

    // Every alert expression, and the operands it compares (see `promql::operands`).
    let phase = Instant::now();
    check_alert_rules(&prometheus, &rules, &mut problems);
    let again: Vec<Check> = dashboard_queries
        .into_iter()
        .filter(|check| check.empty_ok.is_some())
        .collect();
    eprintln!("allowed-empty dashboard queries again, after the quota fill:");
    expect_data(&prometheus, &again, SCRAPE_TIMEOUT, &mut problems);
    timings.push(("alert expressions", phase.elapsed()));

    // Every metric name used is one Prometheus scraped, and every name of the contract is too.
    check_metric_names(&prometheus, &rules, &mut problems);

    let side = side_load.stop().await;
    eprintln!("side load: {side:?}");
    for rule in prometheus.rules() {
        if rule.health != "ok" || !rule.last_error.is_empty() {
            problems.push(format!(
                "rule {} evaluates with health {:?}: {}",
                rule.name, rule.health, rule.last_error
            ));
        }
    }
    timings.push(("total", started.elapsed()));
    eprintln!("RESULT observability live: {timings:?}");
    if !problems.is_empty() {
        panic!(
            "{} problem(s):\n- {}",
            problems.len(),
            problems.join("\n- ")
        );
    }
}

/// The `instance` label Prometheus gives member `index`: its client URL's `host:port`.
fn instance(cluster: &Cluster, index: usize) -> String {
    cluster
        .endpoint(index)
        .trim_start_matches("http://")
        .to_string()
}

/// The repo's alert rule files (`alerts/*.yaml`, not the promtool tests below it).
fn rule_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("alerts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
        .map(|entry| entry.expect("listing alerts/ should work").path())
        .filter(|path| {
            path.is_file()
                && path
                    .extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no rule files in {}", dir.display());
    files
}

/// `- alert:` entries in the rule files, to check Prometheus loaded every one.
fn alert_count_in_files() -> usize {
    rule_files()
        .iter()
        .map(|path| {
            std::fs::read_to_string(path)
                .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
                .lines()
                .filter(|line| line.trim_start().starts_with("- alert:"))
                .count()
        })
        .sum()
}

/// A range at a revision far beyond the store's on every member: each answers OutOfRange, so the
/// "errors by code" panels have a series.
async fn request_future_revision(cluster: &Cluster, problems: &mut Vec<String>) {
    for index in cluster.members() {
        let mut client = cluster.client_with(index, REQUEST_TIMEOUT).await;
        let options = GetOptions::new().with_revision(i64::MAX / 2);
        match client.get("obs/", Some(options)).await {
            Ok(_) => problems.push(format!(
                "{}: a range at revision {} succeeded",
                cluster.name(index),
                i64::MAX / 2
            )),
            Err(err) if error_text(&err).contains(FUTURE_REVISION) => {}
            Err(err) => problems.push(format!(
                "{}: a range at a future revision failed with {:?}, not {FUTURE_REVISION:?}",
                cluster.name(index),
                error_text(&err)
            )),
        }
    }
}

/// Moves the leader to a follower and checks, through Prometheus, that every member counted one
/// leader change per new leader (etcd's `etcd_server_leader_changes_seen_total` counts a new
/// leader, not the loss of one: a member can count at most one per term that passed) and that
/// the leaderless and election histograms observed the change.
async fn leader_change(cluster: &mut Cluster, prometheus: &Prometheus, problems: &mut Vec<String>) {
    let leader = cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    let target = (leader + 1) % MEMBERS;
    let mut ids = Vec::new();
    for index in 0..MEMBERS {
        ids.push(cluster.member_id(index).await);
    }
    let term_before = max_term(cluster).await;
    let since = unix_now();
    let changes_before = prometheus.fresh_values("etcd_server_leader_changes_seen_total", since);
    let leaderless_before = prometheus.fresh_values(LEADERLESS_COUNT, since);
    let elections_before = prometheus.fresh_values(ELECTION_COUNT, since);

    let moved_at = Instant::now();
    cluster.etcdctl_all_ok(&["move-leader", &format!("{:x}", ids[target])]);
    let term_after = wait_all_agree_on(cluster, ids[target]).await;
    let since = unix_now();
    let changes_after = prometheus.fresh_values("etcd_server_leader_changes_seen_total", since);
    let leaderless_after = prometheus.fresh_values(LEADERLESS_COUNT, since);
    let elections_after = prometheus.fresh_values(ELECTION_COUNT, since);
    eprintln!(
        "leader moved {} -> {} (term {term_before} -> {term_after}) and scraped within {:?}",
        cluster.name(leader),
        cluster.name(target),
        moved_at.elapsed()
    );

    let terms = term_after.saturating_sub(term_before) as f64;
    for index in 0..MEMBERS {
        let key = instance(cluster, index);
        let before = changes_before.get(&key).copied().unwrap_or(f64::NAN);
        let after = changes_after.get(&key).copied().unwrap_or(f64::NAN);
        let seen = after - before;
        eprintln!(
            "{} ({key}): etcd_server_leader_changes_seen_total {before} -> {after}, \
             leaderless count {:?} -> {:?}, election count {:?} -> {:?}",
            cluster.name(index),
            leaderless_before.get(&key),
            leaderless_after.get(&key),
            elections_before.get(&key),
            elections_after.get(&key),
        );
        if seen.is_nan() || seen < 1.0 {
            problems.push(format!(
                "{}: etcd_server_leader_changes_seen_total went {before} -> {after} across a \
                 leader change",
                cluster.name(index)
            ));
        } else if seen > terms {
            problems.push(format!(
                "{}: etcd_server_leader_changes_seen_total rose by {seen} while the term rose by \
                 {terms} ({term_before} -> {term_after}): one leader change was counted more \
                 than once. etcd counts a new leader only; losing the leader (leader id 0) is \
                 not a change",
                cluster.name(index)
            ));
        }
    }
    let total = |values: &BTreeMap<String, f64>| values.values().sum::<f64>();
    for (name, before, after) in [
        (LEADERLESS_COUNT, &leaderless_before, &leaderless_after),
        (ELECTION_COUNT, &elections_before, &elections_after),
    ] {
        if total(after) <= total(before) {
            problems.push(format!(
                "{name} summed over the members did not move across a leader change: {} -> {}",
                total(before),
                total(after)
            ));
        }
    }
}

/// Resets one follower's peer links until Prometheus has seen the others count failed sends to
/// it, then heals them. `etcd_network_peer_sent_failures_total{To}` gets a peer's series at the
/// first failed send, in etcd as in oxetcd, so a cluster that never lost a peer link has none and
/// the panels and the `etcdMembersDown` branch on it have nothing to show.
async fn peer_link_failure(
    cluster: &mut Cluster,
    prometheus: &Prometheus,
    problems: &mut Vec<String>,
) {
    let total = format!("sum(etcd_network_peer_sent_failures_total{{job=\"{JOB}\"}})");
    let before = prometheus
        .query(&total)
        .ok()
        .and_then(|samples| samples.first().map(|sample| sample.value))
        .unwrap_or(0.0);
    let leader = cluster.wait_for_leader(FAILOVER_DEADLINE).await;
    let follower = (leader + 1) % MEMBERS;
    let cut_at = Instant::now();
    cluster.partition_with(&[follower], Fault::Reset);
    let counted = prometheus.wait_for(
        &format!("failed sends to {} counted", cluster.name(follower)),
        SCRAPE_TIMEOUT,
        |p| {
            p.query(&total)
                .ok()?
                .first()
                .map(|sample| sample.value)
                .filter(|after| *after > before)
        },
    );
    cluster.heal();
    match counted {
        Ok(after) => eprintln!(
            "peer links of {} reset for {:?}: failed sends {before} -> {after}",
            cluster.name(follower),
            cut_at.elapsed()
        ),
        Err(reason) => problems.push(reason),
    }
    cluster.wait_for_leader(FAILOVER_DEADLINE).await;
}

/// The highest raft term any member reports.
async fn max_term(cluster: &Cluster) -> u64 {
    let mut term = 0;
    for index in cluster.members() {
        if let Ok(status) = cluster.status(index).await {
            term = term.max(status.raft_term());
        }
    }
    term
}

/// Waits until every member's Status names `leader_id`; returns the highest term then.
async fn wait_all_agree_on(cluster: &Cluster, leader_id: u64) -> u64 {
    let deadline = Instant::now() + AGREE_TIMEOUT;
    loop {
        let mut agreeing = 0;
        let mut term = 0;
        for index in cluster.members() {
            if let Ok(status) = cluster.status(index).await {
                term = term.max(status.raft_term());
                if status.leader() == leader_id {
                    agreeing += 1;
                }
            }
        }
        if agreeing == MEMBERS {
            return term;
        }
        if Instant::now() >= deadline {
            cluster.fail(&format!(
                "only {agreeing} of {MEMBERS} members name {leader_id:x} as leader after \
                 {AGREE_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Puts large incompressible values until the member refuses with NOSPACE, then waits for
/// `etcdDatabaseQuotaLowSpace`'s expression (as Prometheus loaded it; the `for` is not part of
/// it) to return a series, and for Prometheus's rule engine to hold the alert pending.
async fn fill_quota(
    cluster: &Cluster,
    prometheus: &Prometheus,
    rules: &[Rule],
    problems: &mut Vec<String>,
) {
    const ALERT: &str = "etcdDatabaseQuotaLowSpace";
    let mut client = cluster.client_with(0, REQUEST_TIMEOUT).await;
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut refused = None;
    for n in 0..FILL_PUTS_MAX {
        let value = noise.bytes(FILL_VALUE_BYTES);
        match client.put(format!("obs/fill/{n:04}"), value, None).await {
            Ok(_) => {}
            Err(err) => {
                refused = Some((n, error_text(&err)));
                break;
            }
        }
    }
    match &refused {
        Some((n, text)) if text.contains(NO_SPACE) => {
            eprintln!("quota: put {n} of {FILL_VALUE_BYTES} bytes refused with {text:?}")
        }
        Some((n, text)) => problems.push(format!(
            "filling the quota: put {n} failed with {text:?}, not {NO_SPACE:?}"
        )),
        None => problems.push(format!(
            "filling the quota: {FILL_PUTS_MAX} puts of {FILL_VALUE_BYTES} bytes all accepted \
             with --quota-backend-bytes {QUOTA_BACKEND_BYTES}"
        )),
    }

    let Some(rule) = rules.iter().find(|rule| rule.name == ALERT) else {
        problems.push(format!("Prometheus loaded no rule named {ALERT}"));
        return;
    };
    let firing = prometheus.wait_for(
        &format!("{ALERT}'s expression to return a series"),
        SCRAPE_TIMEOUT,
        |p| {
            p.query(&rule.query)
                .ok()
                .filter(|samples| !samples.is_empty())
        },
    );
    match firing {
        Ok(samples) => eprintln!("{ALERT}: `{}` -> {}", rule.query, summary(&samples)),
        Err(reason) => {
            let ratio = format!(
                "etcd_mvcc_db_total_size_in_bytes{{job=\"{JOB}\"}} / \
                 etcd_server_quota_backend_bytes{{job=\"{JOB}\"}}"
            );
            let seen = prometheus
                .query(&ratio)
                .map(|samples| summary(&samples))
                .unwrap_or_else(|err| err);
            problems.push(format!("{reason}; DB size / quota per member: {seen}"));
            return;
        }
    }
    let pending = prometheus.wait_for(
        &format!("the rule engine to hold {ALERT} pending"),
        SCRAPE_TIMEOUT,
        |p| {
            let alerts = p.api("/api/v1/alerts").ok()?;
            alerts["alerts"]
                .as_array()?
                .iter()
                .find(|alert| {
                    alert["labels"]["alertname"] == ALERT
                        && (alert["state"] == "pending" || alert["state"] == "firing")
                })
                .map(|alert| alert["state"].as_str().unwrap_or_default().to_string())
        },
    );
    match pending {
        Ok(state) => eprintln!("{ALERT}: {state} in Prometheus's rule engine"),
        Err(reason) => problems.push(reason),
    }
}

/// Every alert rule Prometheus loaded: the whole expression must parse (it returns a series only
/// while the alert condition holds), and each operand of its top-level comparisons and set
/// operators (see [`promql::operands`]) must return data. An alert compares a measured quantity with a
/// threshold; the quantity returning numbers shows the series exist with the labels the rule
/// matches on and that its arithmetic and label matching work. Whether the threshold is right is
/// for the promtool unit tests in `alerts/tests/`.
fn check_alert_rules(prometheus: &Prometheus, rules: &[Rule], problems: &mut Vec<String>) {
    let in_files = alert_count_in_files();
    let loaded = rules.iter().filter(|rule| rule.kind == "alerting").count();
    if loaded != in_files {
        problems.push(format!(
            "Prometheus loaded {loaded} alerting rules, the rule files have {in_files}"
        ));
    }
    let mut checks = Vec::new();
    for rule in rules {
        match prometheus.query(&rule.query) {
            Ok(samples) if samples.is_empty() => {
                eprintln!("rule {}: not true now", rule.name)
            }
            Ok(samples) => eprintln!("rule {}: true now: {}", rule.name, summary(&samples)),
            Err(err) => problems.push(format!(
                "rule {}: Prometheus rejected `{}`: {err}",
                rule.name, rule.query
            )),
        }
        for (n, operand) in promql::operands(&rule.query).into_iter().enumerate() {
            checks.push(Check {
                what: format!("rule {} operand {}", rule.name, n + 1),
                expr: operand,
                empty_ok: None,
            });
        }
    }
    expect_data(prometheus, &checks, SCRAPE_TIMEOUT, problems);
}

/// Every metric name in a dashboard query or a loaded rule must be one Prometheus scraped from
/// the members (`/api/v1/label/__name__/values`); so must every name of the metrics contract
/// (`common/metric_names.rs`, histograms as their `_bucket`, `_sum` and `_count` series). By now
/// the test has caused every event a series waits for (requests, an error code, a leader change,
/// a full quota), and `up` is a series Prometheus stores itself, so no name is exempt.
fn check_metric_names(prometheus: &Prometheus, rules: &[Rule], problems: &mut Vec<String>) {
    let scraped: BTreeSet<String> = match prometheus.api("/api/v1/label/__name__/values") {
        Ok(Value::Array(names)) => names
            .iter()
            .filter_map(|name| name.as_str().map(str::to_string))
            .collect(),
        Ok(other) => {
            problems.push(format!("metric names: unexpected answer {other}"));
            return;
        }
        Err(err) => {
            problems.push(format!("metric names: {err}"));
            return;
        }
    };
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for dashboard in DASHBOARDS {
        for (title, expr) in dashboard_exprs_with(dashboard_path(dashboard), &[("cluster", JOB)]) {
            for name in metric_names_in(&expr) {
                used.entry(name)
                    .or_default()
                    .insert(format!("{dashboard} / {title}"));
            }
        }
    }
    for rule in rules {
        for name in metric_names_in(&rule.query) {
            used.entry(name)
                .or_default()
                .insert(format!("rule {}", rule.name));
        }
    }
    for (name, users) in &used {
        if !scraped.contains(name) {
            problems.push(format!(
                "{name} is used by {users:?} but the members do not export it"
            ));
        }
    }
    let mut contract = Vec::new();
    for name in EXPORTED_METRICS {
        if HISTOGRAMS.contains(name) {
            contract.extend(
                HISTOGRAM_SUFFIXES
                    .iter()
                    .map(|suffix| format!("{name}{suffix}")),
            );
        } else {
            contract.push(name.to_string());
        }
    }
    for name in &contract {
        if !scraped.contains(name) {
            problems.push(format!(
                "{name} is in the metrics contract but not in the members' /metrics"
            ));
        }
    }
    eprintln!(
        "metric names: {} used by dashboards and rules, {} in the contract, {} scraped",
        used.len(),
        contract.len(),
        scraped.len()
    );
}

fn dashboard_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dashboards")
        .join(name)
}

/// Every query of every dashboard, with `$cluster` set to [`JOB`] and the other variables at
/// their defaults (every instance, a 1m rate window, a 5m range).
fn dashboard_checks() -> Vec<Check> {
    let mut checks = Vec::new();
    for dashboard in DASHBOARDS {
        for (title, expr) in dashboard_exprs_with(dashboard_path(dashboard), &[("cluster", JOB)]) {
            let empty_ok = MAY_BE_EMPTY
                .iter()
                .find(|(file, panel, _)| file == dashboard && *panel == title)
                .map(|(_, _, why)| *why);
            checks.push(Check {
                what: format!("{dashboard} / {title}"),
                expr,
                empty_ok,
            });
        }
    }
    checks
}

/// One query that must parse and return data.
struct Check {
    /// Where the query comes from, for the report.
    what: String,
    expr: String,
    /// Why it may come back empty, when it may.
    empty_ok: Option<&'static str>,
}

/// Sends every check's query until it returns at least one sample that is a number (NaN means
/// "no observations in the window", so it does not count as data). A query Prometheus rejects
/// fails at once; one still without data after `timeout` fails then. Checks with `empty_ok` are
/// sent once and may come back empty.
fn expect_data(
    prometheus: &Prometheus,
    checks: &[Check],
    timeout: Duration,
    problems: &mut Vec<String>,
) {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<&Check> = checks.iter().collect();
    loop {
        let mut waiting = Vec::new();
        for check in pending {
            match prometheus.query(&check.expr) {
                Err(err) => problems.push(format!(
                    "{}: Prometheus rejected `{}`: {err}",
                    check.what, check.expr
                )),
                Ok(samples) if samples.iter().any(|sample| !sample.value.is_nan()) => {
                    eprintln!("data   {}: {}", check.what, summary(&samples))
                }
                Ok(samples) => match check.empty_ok {
                    Some(why) => eprintln!(
                        "empty  {} ({} series, allowed: {why})",
                        check.what,
                        samples.len()
                    ),
                    None => waiting.push((check, samples.len())),
                },
            }
        }
        if waiting.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            for (check, series) in waiting {
                problems.push(format!(
                    "{}: `{}` returned {} for {timeout:?}",
                    check.what,
                    check.expr,
                    if series == 0 {
                        "no series".to_string()
                    } else {
                        format!("only NaN ({series} series)")
                    }
                ));
            }
            return;
        }
        pending = waiting.into_iter().map(|(check, _)| check).collect();
        thread::sleep(REQUERY_INTERVAL);
    }
}

/// A few samples of a result, for the report: `{labels} value`.
fn summary(samples: &[Sample]) -> String {
    const SHOWN: usize = 3;
    let mut parts: Vec<String> = samples
        .iter()
        .take(SHOWN)
        .map(|sample| {
            let labels: Vec<String> = sample
                .labels
                .iter()
                .filter(|(name, _)| name.as_str() != "job")
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            format!("{{{}}} {}", labels.join(","), sample.value)
        })
        .collect();
    if samples.len() > SHOWN {
        parts.push(format!("... {} series", samples.len()));
    }
    parts.join("; ")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs_f64()
}

/// Incompressible bytes (xorshift64*), so RocksDB's compression cannot shrink the quota fill.
struct Noise(u64);

impl Noise {
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            out.extend_from_slice(&self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// One series of an instant query's result.
#[derive(Debug, Clone)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One rule as Prometheus loaded it (`/api/v1/rules`).
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    /// `alerting` or `recording`.
    kind: String,
    /// The expression as Prometheus prints it (an alert's `for` is not part of it).
    query: String,
    health: String,
    last_error: String,
}

/// Debian's `prometheus` on a free loopback port with a temp config and TSDB, scraping the
/// members every second and evaluating the repo's rules every second. Dropping it kills it.
struct Prometheus {
    child: Option<Child>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(targets: &[String], rule_files: &[PathBuf]) -> Prometheus {
        let bin = std::env::var("OXETCD_TEST_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        let dir = tempfile::Builder::new()
            .prefix("oxetcd-prometheus-")
            .tempdir()
            .expect("creating a temp dir should work");
        let quoted = |text: &str| serde_json::to_string(text).expect("a string encodes as JSON");
        let rules: Vec<String> = rule_files
            .iter()
            .map(|path| format!("  - {}\n", quoted(&path.display().to_string())))
            .collect();
        let targets: Vec<String> = targets.iter().map(|target| quoted(target)).collect();
        // JSON strings are YAML double-quoted strings.
        let config = format!(
            "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: \
             {SCRAPE_INTERVAL}\nrule_files:\n{}scrape_configs:\n  - job_name: {JOB}\n    \
             static_configs:\n      - targets: [{}]\n",
            rules.concat(),
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("writing the Prometheus config should work");
        let mut prometheus = Prometheus {
            child: None,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            dir,
        };
        for attempt in 1..=PROMETHEUS_SPAWN_ATTEMPTS {
            prometheus.addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            let log = File::create(prometheus.log_path()).expect("creating the log should work");
            let stderr = log.try_clone().expect("cloning a file handle should work");
            let child = Command::new(&bin)
                .current_dir(prometheus.dir.path())
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    prometheus.dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={}", prometheus.addr))
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(stderr))
                .spawn()
                .unwrap_or_else(|err| {
                    panic!(
                        "cannot run {bin}: {err}; install Debian's `prometheus` or set \
                         OXETCD_TEST_PROMETHEUS"
                    )
                });
            prometheus.child = Some(child);
            match prometheus.wait_listening() {
                Ok(()) => return prometheus,
                Err(reason)
                    if attempt < PROMETHEUS_SPAWN_ATTEMPTS
                        && prometheus.log().contains("address already in use") =>
                {
                    eprintln!("prometheus: attempt {attempt} failed ({reason}); new port");
                    prometheus.kill();
                }
                Err(reason) => prometheus.fail(&reason),
            }
        }
        unreachable!("the last attempt either returns or fails");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn fail(&self, reason: &str) -> ! {
        panic!("{reason}\n{}", self.log_tail());
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- prometheus log {} (last {PROMETHEUS_LOG_TAIL_LINES} lines) ---\n{}",
            self.log_path().display(),
            lines[lines.len().saturating_sub(PROMETHEUS_LOG_TAIL_LINES)..].join("\n")
        )
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until the web server answers at all, or the process exits.
    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + PROMETHEUS_READY_TIMEOUT;
        loop {
            let child = self
                .child
                .as_mut()
                .expect("waiting on a started Prometheus");
            if let Some(status) = child.try_wait().expect("waiting on our child should work") {
                self.child = None;
                return Err(format!("prometheus exited: {status}"));
            }
            if http_get(self.addr, "/-/healthy").is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "prometheus not listening on {} after {PROMETHEUS_READY_TIMEOUT:?}",
                    self.addr
                ));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits for `/-/ready` (TSDB open, config and rules loaded).
    fn wait_ready(&self) {
        let ready = self.wait_for("/-/ready", PROMETHEUS_READY_TIMEOUT, |p| {
            http_get(p.addr, "/-/ready")
                .ok()
                .filter(|response| response.status == 200)
        });
        if let Err(reason) = ready {
            self.fail(&reason);
        }
    }

    /// Waits until every target of [`JOB`] was scraped and is up.
    fn wait_targets_up(&self, targets: &[String]) {
        let up = self.wait_for(
            "every member up in /api/v1/targets",
            PROMETHEUS_READY_TIMEOUT,
            |p| {
                let data = p.api("/api/v1/targets?state=active").ok()?;
                let healthy: BTreeSet<String> = data["activeTargets"]
                    .as_array()?
                    .iter()
                    .filter(|target| target["labels"]["job"] == JOB && target["health"] == "up")
                    .filter_map(|target| target["labels"]["instance"].as_str())
                    .map(str::to_string)
                    .collect();
                targets
                    .iter()
                    .all(|target| healthy.contains(target))
                    .then_some(())
            },
        );
        if let Err(reason) = up {
            let targets = self
                .api("/api/v1/targets?state=active")
                .map(|data| data.to_string())
                .unwrap_or_else(|err| err);
            self.fail(&format!("{reason}; targets: {targets}"));
        }
    }

    /// Polls `check` until it gives a value or `timeout` passes.
    fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Prometheus) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check(self) {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                return Err(format!("waited {timeout:?} for {what}"));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// GET of an HTTP API path; the `data` of a `success` answer, else the error Prometheus gave.
    fn api(&self, path: &str) -> Result<Value, String> {
        let response = http_get(self.addr, path).map_err(|err| format!("GET {path}: {err}"))?;
        let body: Value = serde_json::from_slice(&response.body).map_err(|err| {
            format!(
                "GET {path}: HTTP {} with a body that is not JSON ({err}): {}",
                response.status,
                response.text()
            )
        })?;
        if body["status"] != "success" {
            return Err(format!(
                "{}: {}",
                body["errorType"].as_str().unwrap_or("error"),
                body["error"].as_str().unwrap_or("(no error text)")
            ));
        }
        Ok(body["data"].clone())
    }

    /// An instant query at the current time.
    fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(expr)))?;
        let number = |value: &Value| {
            value
                .as_str()
                .and_then(|text| text.parse::<f64>().ok())
                .ok_or_else(|| format!("sample value {value} is not a number"))
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .ok_or("vector result without a list")?
                .iter()
                .map(|series| {
                    let labels = series["metric"]
                        .as_object()
                        .map(|labels| {
                            labels
                                .iter()
                                .map(|(name, value)| {
                                    (name.clone(), value.as_str().unwrap_or_default().to_string())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    Ok(Sample {
                        labels,
                        value: number(&series["value"][1])?,
                    })
                })
                .collect(),
            Some("scalar") => Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: number(&data["result"][1])?,
            }]),
            other => Err(format!("unexpected result type {other:?}")),
        }
    }

    /// Per-instance values of `metric` from scrapes that started after `since` (Unix seconds),
    /// once every member has one.
    fn fresh_values(&self, metric: &str, since: f64) -> BTreeMap<String, f64> {
        let selector = format!("{metric}{{job=\"{JOB}\"}}");
        let fresh = self.wait_for(
            &format!("a scrape of {metric} from every member after {since}"),
            SCRAPE_TIMEOUT,
            |p| {
                let stamps = p.query(&format!("timestamp({selector})")).ok()?;
                if stamps.len() < MEMBERS || stamps.iter().any(|stamp| stamp.value <= since) {
                    return None;
                }
                let values = p.query(&selector).ok()?;
                Some(
                    values
                        .into_iter()
                        .map(|sample| {
                            let instance = sample.labels.get("instance").cloned();
                            (instance.unwrap_or_default(), sample.value)
                        })
                        .collect(),
                )
            },
        );
        fresh.unwrap_or_else(|reason| self.fail(&reason))
    }

    /// Every rule Prometheus loaded.
    fn rules(&self) -> Vec<Rule> {
        let data = self
            .api("/api/v1/rules")
            .unwrap_or_else(|err| self.fail(&format!("/api/v1/rules: {err}")));
        let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
        data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| group["rules"].as_array().into_iter().flatten())
            .map(|rule| Rule {
                name: text(&rule["name"]),
                kind: text(&rule["type"]),
                query: text(&rule["query"]),
                health: text(&rule["health"]),
                last_error: text(&rule["lastError"]),
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        if std::env::var_os("OXETCD_TEST_KEEP_DIR").is_some_and(|value| value == "1") {
            self.dir.disable_cleanup(true);
            eprintln!("prometheus: kept {}", self.dir.path().display());
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Reads, a watch stream and a kept-alive lease, on their own tasks, one round every
/// [`SIDE_LOAD_INTERVAL`]; errors (e.g. during the leader change) are counted, not fatal.
struct SideLoad {
    stop: Arc<AtomicBool>,
    counts: Arc<SideCounts>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct SideCounts {
    reads: AtomicU64,
    watch_events: AtomicU64,
    keep_alives: AtomicU64,
    errors: AtomicU64,
}

impl SideLoad {
    async fn start(cluster: &Cluster) -> SideLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(SideCounts::default());
        let readers = cluster.client_with(0, REQUEST_TIMEOUT).await;
        let watcher = cluster.client_with(1 % MEMBERS, REQUEST_TIMEOUT).await;
        let leaser = cluster.client_with(2 % MEMBERS, REQUEST_TIMEOUT).await;
        let tasks = vec![
            tokio::spawn(read_loop(readers, stop.clone(), counts.clone())),
            tokio::spawn(watch_loop(watcher, stop.clone(), counts.clone())),
            tokio::spawn(lease_loop(leaser, stop.clone(), counts.clone())),
        ];
        SideLoad {
            stop,
            counts,
            tasks,
        }
    }

    async fn stop(self) -> SideCounts {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("side load tasks do not panic");
        }
        Arc::try_unwrap(self.counts).expect("the tasks hold no counts once joined")
    }
}

/// Linearizable and serializable ranges over the write load's keys.
async fn read_loop(mut client: Client, stop: Arc<AtomicBool>, counts: Arc<SideCounts>) {
    while !stop.load(Ordering::Relaxed) {
        for serializable in [false, true] {
            let mut options = GetOptions::new().with_prefix().with_limit(10);
            if serializable {
                options = options.with_serializable();
            }
            match client.get("obs/load/", Some(options)).await {
                Ok(_) => counts.reads.fetch_add(1, Ordering::Relaxed),
                Err(_) => counts.errors.fetch_add(1, Ordering::Relaxed),
            };
        }
        tokio::time::sleep(SIDE_LOAD_INTERVAL).await;
    }
}

/// One watch stream on `obs/`, drained; opened again if it ends.
async fn watch_loop(mut client: Client, stop: Arc<AtomicBool>, counts: Arc<SideCounts>) {
    let mut stream = None;
    while !stop.load(Ordering::Relaxed) {
        if stream.is_none() {
            let options = WatchOptions::new().with_prefix();
            match client.watch("obs/", Some(options)).await {
                Ok(opened) => stream = Some(opened),
                Err(_) => {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(SIDE_LOAD_INTERVAL).await;
                    continue;
                }
            }
        }
        let open = stream.as_mut().expect("opened just above");
        match tokio::time::timeout(SIDE_LOAD_INTERVAL, open.message()).await {
            Err(_) => {}
            Ok(Ok(Some(response))) => {
                counts
                    .watch_events
                    .fetch_add(response.events().len() as u64, Ordering::Relaxed);
            }
            Ok(Ok(None) | Err(_)) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                stream = None;
            }
        }
    }
}

/// A lease with a key attached, kept alive over one LeaseKeepAlive stream (opened again after an
/// error).
async fn lease_loop(mut client: Client, stop: Arc<AtomicBool>, counts: Arc<SideCounts>) {
    let mut lease = None;
    let mut keeper = None;
    while !stop.load(Ordering::Relaxed) {
        let outcome: Result<(), etcd_client::Error> = async {
            let id = match lease {
                Some(id) => id,
                None => {
                    let id = client.lease_grant(LEASE_TTL_S, None).await?.id();
                    let options = PutOptions::new().with_lease(id);
                    client.put("obs/leased", "held", Some(options)).await?;
                    lease = Some(id);
                    id
                }
            };
            if keeper.is_none() {
                keeper = Some(client.lease_keep_alive(id).await?);
            }
            let (sender, responses) = keeper.as_mut().expect("opened just above");
            sender.keep_alive().await?;
            match tokio::time::timeout(REQUEST_TIMEOUT, responses.message()).await {
                Ok(Ok(Some(response))) if response.ttl() > 0 => Ok(()),
                Ok(Ok(Some(_))) => {
                    // Expired (e.g. kept from a member without a leader for too long): new lease.
                    lease = None;
                    keeper = None;
                    Ok(())
                }
                Ok(Ok(None)) | Err(_) => {
                    keeper = None;
                    Ok(())
                }
                Ok(Err(err)) => Err(err),
            }
        }
        .await;
        match outcome {
            Ok(()) => counts.keep_alives.fetch_add(1, Ordering::Relaxed),
            Err(_) => {
                keeper = None;
                counts.errors.fetch_add(1, Ordering::Relaxed)
            }
        };
        tokio::time::sleep(SIDE_LOAD_INTERVAL).await;
    }
}
