//! What a run measured and how it is shown: the latency record, etcd benchmark's text summary
//! (totals, a response time histogram, the latency distribution) and the `--json` object.

use std::fmt::Write as _;
use std::time::Duration;

/// Percentiles the summary lists, as etcd's benchmark does.
const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];
/// Buckets of the response time histogram, evenly spaced from the fastest to the slowest.
const HISTOGRAM_BUCKETS: usize = 10;
/// Width of the longest histogram bar, in characters.
const BAR_WIDTH_MAX: usize = 40;

/// Every latency one run recorded, its errors, and the CPU the run cost.
#[derive(Debug, Default)]
pub struct Report {
    /// The workload's name (`put`, `range`, `watch`, ...).
    pub op: String,
    /// Successful requests' latencies (watch: event delivery latencies), in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// Requests that failed (watch: events that never arrived).
    pub errors: u64,
    /// The first failure, to say what went wrong.
    pub first_error: Option<String>,
    /// From the clock's start to the last response.
    pub elapsed: Duration,
    /// User+system CPU of the `--server-pids` processes over the timed window.
    pub server_cpu: Option<Duration>,
    /// User+system CPU of this benchmark process over the timed window.
    pub bench_cpu: Duration,
    /// Workload-specific figures, added to the JSON object as they are.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The figures the summary prints, computed once from a `Report`.
struct Figures {
    count: usize,
    slowest_s: f64,
    fastest_s: f64,
    average_s: f64,
    stddev_s: f64,
    requests_per_s: f64,
    /// (upper bound in seconds, responses at or below it and above the previous bound).
    histogram: Vec<(f64, u64)>,
    /// (percentile, latency in seconds).
    percentiles: Vec<(f64, f64)>,
}

impl Report {
    fn figures(&mut self) -> Figures {
        self.latencies_ns.sort_unstable();
        let sorted = &self.latencies_ns;
        let count = sorted.len();
        let secs = |ns: u64| ns as f64 / 1e9;
        if count == 0 {
            return Figures {
                count,
                slowest_s: 0.0,
                fastest_s: 0.0,
                average_s: 0.0,
                stddev_s: 0.0,
                requests_per_s: 0.0,
                histogram: Vec::new(),
                percentiles: Vec::new(),
            };
        }
        let fastest_s = secs(sorted[0]);
        let slowest_s = secs(sorted[count - 1]);
        let average_s = sorted.iter().map(|&ns| secs(ns)).sum::<f64>() / count as f64;
        let variance = sorted
            .iter()
            .map(|&ns| (secs(ns) - average_s).powi(2))
            .sum::<f64>()
            / count as f64;
        let elapsed_s = self.elapsed.as_secs_f64();
        let requests_per_s = if elapsed_s > 0.0 {
            count as f64 / elapsed_s
        } else {
            0.0
        };
        Figures {
            count,
            slowest_s,
            fastest_s,
            average_s,
            stddev_s: variance.sqrt(),
            requests_per_s,
            histogram: histogram(sorted),
            percentiles: PERCENTILES
                .iter()
                .map(|&p| (p, secs(percentile_ns(sorted, p))))
                .collect(),
        }
    }

    /// The summary as etcd's benchmark prints it, plus the CPU figures when known.
    pub fn text(&mut self) -> String {
        let f = self.figures();
        let mut out = String::new();
        let _ = writeln!(out, "\nSummary:");
        let _ = writeln!(out, "  Total:\t{:.4} secs.", self.elapsed.as_secs_f64());
        let _ = writeln!(out, "  Slowest:\t{:.4} secs.", f.slowest_s);
        let _ = writeln!(out, "  Fastest:\t{:.4} secs.", f.fastest_s);
        let _ = writeln!(out, "  Average:\t{:.4} secs.", f.average_s);
        let _ = writeln!(out, "  Stddev:\t{:.4} secs.", f.stddev_s);
        let _ = writeln!(out, "  Requests/sec:\t{:.4}", f.requests_per_s);
        let largest = f.histogram.iter().map(|&(_, n)| n).max().unwrap_or(0);
        let _ = writeln!(out, "\nResponse time histogram:");
        for &(bound_s, n) in &f.histogram {
            let bar = if largest == 0 {
                0
            } else {
                (n as usize * BAR_WIDTH_MAX).div_ceil(largest as usize)
            };
            let _ = writeln!(out, "  {bound_s:.4} [{n}]\t|{}", "∎".repeat(bar));
        }
        let _ = writeln!(out, "\nLatency distribution:");
        for &(p, s) in &f.percentiles {
            let _ = writeln!(out, "  {p}% in {s:.4} secs.");
        }
        if self.errors > 0 {
            let _ = writeln!(
                out,
                "\nErrors: {} (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("-")
            );
        }
        if let Some(cpu) = self.server_cpu {
            let _ = writeln!(
                out,
                "\nServer CPU:\t{:.3} secs. ({:.1} us/request)",
                cpu.as_secs_f64(),
                per_request_us(cpu, f.count)
            );
        }
        let _ = writeln!(
            out,
            "Benchmark CPU:\t{:.3} secs.",
            self.bench_cpu.as_secs_f64()
        );
        out
    }

    /// The same figures as one JSON object (seconds, as the text summary shows them).
    pub fn json(&mut self) -> serde_json::Value {
        let f = self.figures();
        let mut object = serde_json::json!({
            "op": self.op,
            "requests": f.count,
            "errors": self.errors,
            "total_s": self.elapsed.as_secs_f64(),
            "slowest_s": f.slowest_s,
            "fastest_s": f.fastest_s,
            "average_s": f.average_s,
            "stddev_s": f.stddev_s,
            "requests_per_s": f.requests_per_s,
            "histogram": f.histogram.iter()
                .map(|&(le_s, count)| serde_json::json!({"le_s": le_s, "count": count}))
                .collect::<Vec<_>>(),
            "percentiles_s": f.percentiles.iter()
                .map(|&(p, s)| (format!("p{p}"), serde_json::json!(s)))
                .collect::<serde_json::Map<_, _>>(),
            "bench_cpu_s": self.bench_cpu.as_secs_f64(),
        });
        let map = object
            .as_object_mut()
            .expect("json! of an object literal is an object");
        if let Some(cpu) = self.server_cpu {
            map.insert("server_cpu_s".into(), cpu.as_secs_f64().into());
            map.insert(
                "server_cpu_us_per_request".into(),
                per_request_us(cpu, f.count).into(),
            );
        }
        if let Some(error) = &self.first_error {
            map.insert("first_error".into(), error.clone().into());
        }
        for (key, value) in &self.extra {
            map.insert(key.clone(), value.clone());
        }
        object
    }
}

fn per_request_us(cpu: Duration, count: usize) -> f64 {
    if count == 0 {
        return 0.0;
    }
    cpu.as_secs_f64() * 1e6 / count as f64
}

/// The `p`th percentile of sorted latencies (nearest rank).
fn percentile_ns(sorted: &[u64], p: f64) -> u64 {
    let rank = ((sorted.len() as f64) * p / 100.0).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Counts per bucket; bounds evenly spaced from the fastest to the slowest, the first bucket
/// holding exactly the fastest.
fn histogram(sorted: &[u64]) -> Vec<(f64, u64)> {
    let (Some(&fastest), Some(&slowest)) = (sorted.first(), sorted.last()) else {
        return Vec::new();
    };
    let step = (slowest - fastest) as f64 / HISTOGRAM_BUCKETS as f64;
    let mut out = Vec::with_capacity(HISTOGRAM_BUCKETS + 1);
    let mut at = 0;
    for bucket in 0..=HISTOGRAM_BUCKETS {
        let bound = if bucket == HISTOGRAM_BUCKETS {
            slowest
        } else {
            fastest + (step * bucket as f64) as u64
        };
        let end = at + sorted[at..].partition_point(|&ns| ns <= bound);
        out.push((bound as f64 / 1e9, (end - at) as u64));
        at = end;
    }
    out
}

/// User+system CPU time of a `/proc/PID/stat` line, in clock ticks: fields 14 and 15, counted
/// after the command name, which sits in parentheses and may itself hold both.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second of `/proc/PID/stat`.
fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// The summed user+system CPU the processes have used so far (`self` for this one); a process
/// that is gone is an error, so a server that died mid-run is not measured as idle.
pub fn cpu_used(pids: &[String]) -> Result<Duration, String> {
    let mut ticks = 0;
    for pid in pids {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
        ticks += stat_cpu_ticks(&stat).ok_or_else(|| format!("{path}: unexpected format"))?;
    }
    Ok(Duration::from_secs_f64(
        ticks as f64 / ticks_per_second() as f64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let sorted: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile_ns(&sorted, 50.0), 500);
        assert_eq!(percentile_ns(&sorted, 99.9), 999);
        assert_eq!(percentile_ns(&sorted[..1], 99.0), 1);
    }

    #[test]
    fn the_histogram_holds_every_latency_once() {
        let sorted: Vec<u64> = (0..1000).map(|i| 1_000_000 + i * 1000).collect();
        let buckets = histogram(&sorted);
        assert_eq!(buckets.len(), HISTOGRAM_BUCKETS + 1);
        assert_eq!(buckets.iter().map(|&(_, n)| n).sum::<u64>(), 1000);
        assert_eq!(buckets[0].1, 1);
        assert_eq!(
            histogram(&[7, 7, 7]).iter().map(|&(_, n)| n).sum::<u64>(),
            3
        );
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 300 45 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(345));
        assert_eq!(stat_cpu_ticks("42 (x) S 1"), None);
    }

    #[test]
    fn json_carries_the_counts_and_cpu() {
        let mut report = Report {
            op: "put".into(),
            latencies_ns: vec![2_000_000, 1_000_000, 3_000_000],
            elapsed: Duration::from_secs(1),
            server_cpu: Some(Duration::from_millis(3)),
            ..Report::default()
        };
        let json = report.json();
        assert_eq!(json["requests"], 3);
        assert_eq!(json["requests_per_s"], 3.0);
        assert_eq!(json["server_cpu_us_per_request"], 1000.0);
        assert_eq!(json["percentiles_s"]["p50"], 0.002);
        assert!(report.text().contains("Requests/sec:\t3.0000"));
    }
}
