//! Smoke tests of the `oxetcd-bench` binary: every workload runs a handful of requests against a
//! real server (oxetcd, or etcd with OXETCD_TEST_BIN), prints a summary that parses, counts
//! the requests it was asked for, and leaves the keys a user can read back.

use std::process::Command;

use crate::common::Server;

fn bench(server: &Server, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_oxetcd-bench"))
        .arg("--endpoints")
        .arg(server.endpoint())
        .args(args)
        .output()
        .expect("oxetcd-bench runs")
}

/// Runs a workload with `--json` and returns the summary object.
fn bench_json(server: &Server, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.push("--json");
    let output = bench(server, &args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "oxetcd-bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("oxetcd-bench {args:?} printed no JSON ({e}): {stdout}"));
    assert_eq!(summary["errors"], 0, "{summary}");
    let histogram_total: u64 = summary["histogram"]
        .as_array()
        .expect("a histogram")
        .iter()
        .map(|bucket| bucket["count"].as_u64().expect("a count"))
        .sum();
    assert_eq!(
        Some(histogram_total),
        summary["requests"].as_u64(),
        "{summary}"
    );
    assert!(summary["percentiles_s"]["p99"].as_f64().expect("p99") > 0.0);
    summary
}

#[test]
fn every_workload_counts_its_requests() {
    let server = Server::start();
    let keys = ["--key-space-size", "40", "--sequential-keys"];

    let put = bench_json(
        &server,
        &[&["put", "--total", "40", "--clients", "4"], &keys[..]].concat(),
    );
    assert_eq!(put["op"], "put");
    assert_eq!(put["requests"], 40);
    // Sequential keys over a key space of 40: each key once.
    let listed = server.etcdctl_ok(&["get", "bench/", "--prefix", "--keys-only"]);
    assert_eq!(
        listed.lines().filter(|l| !l.is_empty()).count(),
        40,
        "{listed}"
    );
    assert!(listed.contains("bench/0000000039"), "{listed}");

    for consistency in ["l", "s"] {
        let range = bench_json(
            &server,
            &[
                &[
                    "range",
                    "--consistency",
                    consistency,
                    "--total",
                    "20",
                    "--conns",
                    "2",
                    "--clients",
                    "4",
                ],
                &keys[..],
            ]
            .concat(),
        );
        assert_eq!(range["requests"], 20);
    }
    // Pages of 15 over 40 keys: a walk is three requests; seven requests, two walks and a page.
    let pages = bench_json(
        &server,
        &["range", "--paginate", "--limit", "15", "--total", "7"],
    );
    assert_eq!(pages["requests"], 7);

    let txn = bench_json(
        &server,
        &[
            &[
                "txn-put",
                "--txn-ops",
                "4",
                "--total",
                "10",
                "--clients",
                "2",
            ],
            &keys[..],
        ]
        .concat(),
    );
    assert_eq!(txn["requests"], 10);

    let lease = bench_json(
        &server,
        &["lease-keepalive", "--clients", "3", "--total", "30"],
    );
    assert_eq!(lease["requests"], 30);
    // The leases are revoked when the run ends.
    let leases = server.etcdctl_ok(&["lease", "list"]);
    assert!(leases.starts_with("found 0 leases"), "{leases}");

    let mixed = bench_json(
        &server,
        &[&["mixed", "--total", "30", "--clients", "3"], &keys[..]].concat(),
    );
    assert_eq!(mixed["requests"], 30);
}

#[test]
fn watch_reports_one_delivery_per_watcher_and_put() {
    let server = Server::start();
    let watch = bench_json(
        &server,
        &[
            "watch",
            "--watchers",
            "10",
            "--streams",
            "3",
            "--total",
            "20",
            "--rate",
            "200",
            "--key-space-size",
            "5",
        ],
    );
    assert_eq!(watch["puts"], 20);
    assert_eq!(watch["events_expected"], 200);
    assert_eq!(watch["requests"], 200);
}

#[test]
fn text_summary_and_rate_limit() {
    let server = Server::start();
    let output = bench(&server, &["put", "--total", "20", "--rate", "100"]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for line in [
        "Summary:",
        "Requests/sec:",
        "Response time histogram:",
        "Latency distribution:",
        "99.9% in",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    // 20 puts paced at 100/s take at least the 190 ms between the first and the last.
    let total_s: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Total:"))
        .and_then(|rest| rest.trim().trim_end_matches(" secs.").parse().ok())
        .expect("a Total line");
    assert!(total_s >= 0.19, "{text}");

    let refused = bench(
        &server,
        &["put", "--key-size", "4", "--key-space-size", "1000"],
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--key-size"));
}
