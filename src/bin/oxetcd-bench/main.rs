//! `oxetcd-bench`: a load generator for etcd v3 servers (oxetcd or etcd) in the manner of etcd's
//! `benchmark` tool: put, range, txn-put, watch, lease-keepalive and mixed workloads, with the
//! same summary (requests/s, average, stddev, percentiles, a latency histogram) or `--json`.
//!
//! `--clients` tasks share `--conns` gRPC connections round-robin, the connections the
//! `--endpoints` round-robin. A run stops after `--total` requests or `--duration` seconds;
//! `--rate` paces all clients together. `--server-pids` adds the servers' CPU per request (from
//! `/proc/PID/stat`, over the timed window only). The watch workload is in `watch.rs`, the other
//! request loops in `workload.rs`, the summary in `report.rs`.

mod report;
mod watch;
mod workload;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Arg, ArgAction, ArgMatches, Command, value_parser};
use tonic::transport::{Channel, Endpoint};

use report::Report;

/// Keys longer than this make no sense for a benchmark and etcd refuses them anyway.
const KEY_SIZE_MAX: usize = 1 << 16;
/// Clients, connections and watchers above this are a typo, not a benchmark.
const CONCURRENCY_MAX: usize = 100_000;
/// How often the progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// The flags every workload shares.
#[derive(Clone, Debug)]
pub struct Common {
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    /// Requests to issue (`u64::MAX` with `--duration`).
    pub total: u64,
    pub duration: Option<Duration>,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space_size: u64,
    pub sequential_keys: bool,
    /// Requests per second over all clients; 0 is unlimited.
    pub rate: u64,
    pub prefix: String,
    pub server_pids: Vec<String>,
    pub json: bool,
}

impl Common {
    /// Key number `index`: the prefix, then the index zero-padded to `--key-size` bytes in all.
    pub fn key(&self, index: u64) -> Vec<u8> {
        let width = self.key_size.saturating_sub(self.prefix.len());
        format!("{}{index:0width$}", self.prefix).into_bytes()
    }

    /// The key for request number `seq`: the next in turn with `--sequential-keys`, else random.
    pub fn key_for(&self, seq: u64) -> Vec<u8> {
        let index = if self.sequential_keys {
            seq % self.key_space_size
        } else {
            rand::random_range(0..self.key_space_size)
        };
        self.key(index)
    }

    /// The end of the range holding every key under the prefix.
    pub fn prefix_end(&self) -> Vec<u8> {
        prefix_end(self.prefix.as_bytes())
    }
}

/// The smallest key greater than every key that starts with `prefix` (`\0` for all keys).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn command() -> Command {
    let global = |arg: Arg| arg.global(true);
    Command::new("oxetcd-bench")
        .about("Benchmark an etcd v3 server (oxetcd or etcd) the way etcd's `benchmark` does")
        .subcommand_required(true)
        .arg(global(
            Arg::new("endpoints")
                .long("endpoints")
                .default_value("http://127.0.0.1:2379")
                .help("comma-separated client URLs, used round-robin by the connections"),
        ))
        .arg(global(
            Arg::new("conns")
                .long("conns")
                .default_value("1")
                .value_parser(value_parser!(usize))
                .help("gRPC connections, shared round-robin by the clients"),
        ))
        .arg(global(
            Arg::new("clients")
                .long("clients")
                .default_value("1")
                .value_parser(value_parser!(usize))
                .help("concurrent clients, each with one request in flight"),
        ))
        .arg(global(
            Arg::new("total")
                .long("total")
                .default_value("10000")
                .value_parser(value_parser!(u64))
                .help("requests in all (watch: puts)"),
        ))
        .arg(global(
            Arg::new("duration")
                .long("duration")
                .value_parser(value_parser!(f64))
                .help("run for this many seconds instead of --total requests"),
        ))
        .arg(global(
            Arg::new("key-size")
                .long("key-size")
                .default_value("16")
                .value_parser(value_parser!(usize))
                .help("key length in bytes, the prefix included"),
        ))
        .arg(global(
            Arg::new("val-size")
                .long("val-size")
                .default_value("256")
                .value_parser(value_parser!(usize))
                .help("value length in bytes"),
        ))
        .arg(global(
            Arg::new("key-space-size")
                .long("key-space-size")
                .default_value("1")
                .value_parser(value_parser!(u64))
                .help("distinct keys the requests pick from"),
        ))
        .arg(global(
            Arg::new("sequential-keys")
                .long("sequential-keys")
                .action(ArgAction::SetTrue)
                .help("take keys in order (wrapping) instead of at random"),
        ))
        .arg(global(
            Arg::new("rate")
                .long("rate")
                .default_value("0")
                .value_parser(value_parser!(u64))
                .help("requests per second over all clients (watch: puts); 0 is unlimited"),
        ))
        .arg(global(
            Arg::new("prefix-key")
                .long("prefix-key")
                .default_value("bench/")
                .help("the prefix every key starts with"),
        ))
        .arg(global(Arg::new("server-pids").long("server-pids").help(
            "comma-separated server PIDs on this machine: report their CPU per request",
        )))
        .arg(global(
            Arg::new("json")
                .long("json")
                .action(ArgAction::SetTrue)
                .help("print one JSON object instead of the text summary"),
        ))
        .subcommand(Command::new("put").about("put keys from the key space"))
        .subcommand(
            Command::new("range")
                .about("range one key, or a prefix (with --limit, as Kubernetes lists do)")
                .arg(
                    Arg::new("consistency")
                        .long("consistency")
                        .default_value("l")
                        .value_parser(["l", "s"])
                        .help("l: linearizable, s: serializable"),
                )
                .arg(
                    Arg::new("limit")
                        .long("limit")
                        .default_value("0")
                        .value_parser(value_parser!(i64))
                        .help("most keys per response; 0 is no limit"),
                )
                .arg(
                    Arg::new("prefix")
                        .long("prefix")
                        .action(ArgAction::SetTrue)
                        .help("range every key under the prefix instead of one key"),
                )
                .arg(
                    Arg::new("paginate")
                        .long("paginate")
                        .action(ArgAction::SetTrue)
                        .help(
                            "walk the prefix page by page at the first page's revision, \
                             one request per page (implies --prefix; needs --limit)",
                        ),
                ),
        )
        .subcommand(
            Command::new("txn-put")
                .about("put keys in transactions")
                .arg(
                    Arg::new("txn-ops")
                        .long("txn-ops")
                        .default_value("1")
                        .value_parser(value_parser!(usize))
                        .help("puts per transaction"),
                ),
        )
        .subcommand(
            Command::new("watch")
                .about("watchers on the prefix; puts at --rate; event delivery latency")
                .arg(
                    Arg::new("watchers")
                        .long("watchers")
                        .default_value("1")
                        .value_parser(value_parser!(usize))
                        .help("watchers on the prefix, spread over the streams"),
                )
                .arg(
                    Arg::new("streams")
                        .long("streams")
                        .value_parser(value_parser!(usize))
                        .help("watch streams (default: one per connection)"),
                ),
        )
        .subcommand(
            Command::new("lease-keepalive")
                .about("each client grants a lease and keeps it alive over one stream"),
        )
        .subcommand(
            Command::new("mixed")
                .about("puts and linearizable gets of keys from the key space")
                .arg(
                    Arg::new("read-ratio")
                        .long("read-ratio")
                        .default_value("0.9")
                        .value_parser(value_parser!(f64))
                        .help("share of requests that are gets"),
                ),
        )
}

fn common_flags(m: &ArgMatches) -> Result<Common, String> {
    let endpoints: Vec<String> = m
        .get_one::<String>("endpoints")
        .expect("defaulted")
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    if endpoints.is_empty() {
        return Err("--endpoints names no URL".into());
    }
    let count = |name: &str| -> Result<usize, String> {
        let n = *m.get_one::<usize>(name).expect("defaulted");
        if (1..=CONCURRENCY_MAX).contains(&n) {
            Ok(n)
        } else {
            Err(format!("--{name} must be 1..={CONCURRENCY_MAX}"))
        }
    };
    let duration = match m.get_one::<f64>("duration") {
        Some(&s) if s > 0.0 && s.is_finite() => Some(Duration::from_secs_f64(s)),
        Some(_) => return Err("--duration must be a positive number of seconds".into()),
        None => None,
    };
    let total = if duration.is_some()
        && m.value_source("total") != Some(clap::parser::ValueSource::CommandLine)
    {
        u64::MAX
    } else {
        *m.get_one::<u64>("total").expect("defaulted")
    };
    if total == 0 {
        return Err("--total must be positive".into());
    }
    let key_space_size = *m.get_one::<u64>("key-space-size").expect("defaulted");
    if key_space_size == 0 {
        return Err("--key-space-size must be positive".into());
    }
    let prefix = m
        .get_one::<String>("prefix-key")
        .expect("defaulted")
        .clone();
    let key_size = *m.get_one::<usize>("key-size").expect("defaulted");
    let digits = (key_space_size - 1).to_string().len();
    if key_size < prefix.len() + digits || key_size > KEY_SIZE_MAX {
        return Err(format!(
            "--key-size must be {}..={KEY_SIZE_MAX} for the prefix {prefix:?} and \
             {key_space_size} keys",
            prefix.len() + digits
        ));
    }
    let server_pids = match m.get_one::<String>("server-pids") {
        Some(list) => list
            .split(',')
            .map(|pid| match pid.trim().parse::<u32>() {
                Ok(n) => Ok(n.to_string()),
                Err(_) => Err(format!("--server-pids: {pid:?} is not a PID")),
            })
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(Common {
        endpoints,
        conns: count("conns")?,
        clients: count("clients")?,
        total,
        duration,
        key_size,
        val_size: *m.get_one::<usize>("val-size").expect("defaulted"),
        key_space_size,
        sequential_keys: m.get_flag("sequential-keys"),
        rate: *m.get_one::<u64>("rate").expect("defaulted"),
        prefix,
        server_pids,
        json: m.get_flag("json"),
    })
}

/// `--conns` channels, connected before the clock starts, endpoints taken round-robin.
pub async fn connect(common: &Common) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::with_capacity(common.conns);
    for i in 0..common.conns {
        let url = &common.endpoints[i % common.endpoints.len()];
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("{url}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connecting to {url}: {e}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Hands out request numbers until `--total` or `--duration` is reached, pacing them to `--rate`.
pub struct Issuer {
    next: AtomicU64,
    total: u64,
    started: Instant,
    deadline: Option<Instant>,
    interval: Option<Duration>,
    /// Requests answered (or failed), for the progress line.
    pub done: AtomicU64,
}

impl Issuer {
    pub fn new(common: &Common) -> Issuer {
        let started = Instant::now();
        Issuer {
            next: AtomicU64::new(0),
            total: common.total,
            started,
            deadline: common.duration.map(|d| started + d),
            interval: (common.rate > 0).then(|| Duration::from_secs_f64(1.0 / common.rate as f64)),
            done: AtomicU64::new(0),
        }
    }

    /// The next request number once it is due, or `None` when the run is over.
    pub async fn next(&self) -> Option<u64> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        if seq >= self.total {
            return None;
        }
        if let Some(interval) = self.interval {
            let due = self.started + interval.mul_f64(seq as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        Some(seq)
    }

    pub fn started(&self) -> Instant {
        self.started
    }
}

/// Redraws a progress bar on stderr until `stop` is set (only when stderr is a terminal).
pub fn spawn_progress(
    issuer: Arc<Issuer>,
    common: &Common,
    stop: Arc<AtomicBool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let total = common.total;
    let duration = common.duration;
    Some(tokio::spawn(async move {
        const WIDTH: usize = 40;
        loop {
            let done = issuer.done.load(Ordering::Relaxed);
            let elapsed = issuer.started().elapsed();
            let fraction = match duration {
                Some(d) => elapsed.as_secs_f64() / d.as_secs_f64(),
                None => done as f64 / total as f64,
            }
            .clamp(0.0, 1.0);
            let filled = (fraction * WIDTH as f64) as usize;
            let count = match duration {
                Some(d) => format!(
                    "{done} in {:.1}/{:.0} s",
                    elapsed.as_secs_f64(),
                    d.as_secs_f64()
                ),
                None => format!("{done}/{total}"),
            };
            {
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r [{}{}] {:3.0}% {count}  ",
                    "=".repeat(filled),
                    " ".repeat(WIDTH - filled),
                    fraction * 100.0
                );
                let _ = err.flush();
            }
            if stop.load(Ordering::Relaxed) {
                let _ = writeln!(std::io::stderr());
                return;
            }
            tokio::time::sleep(PROGRESS_INTERVAL).await;
        }
    }))
}

/// CPU of the servers and of this process, read when the clock starts and when it stops.
pub struct CpuClock {
    server_pids: Vec<String>,
    server_before: Option<Duration>,
    bench_before: Duration,
}

impl CpuClock {
    pub fn start(common: &Common) -> Result<CpuClock, String> {
        let server_before = if common.server_pids.is_empty() {
            None
        } else {
            Some(report::cpu_used(&common.server_pids)?)
        };
        Ok(CpuClock {
            server_pids: common.server_pids.clone(),
            server_before,
            bench_before: report::cpu_used(&["self".to_owned()])?,
        })
    }

    pub fn stop(&self, report: &mut Report) -> Result<(), String> {
        if let Some(before) = self.server_before {
            report.server_cpu = Some(report::cpu_used(&self.server_pids)?.saturating_sub(before));
        }
        report.bench_cpu =
            report::cpu_used(&["self".to_owned()])?.saturating_sub(self.bench_before);
        Ok(())
    }
}

async fn run(matches: ArgMatches) -> Result<Report, String> {
    let common = common_flags(&matches)?;
    let (name, sub) = matches.subcommand().expect("a subcommand is required");
    let kind = match name {
        "put" => workload::Kind::Put,
        "range" => {
            let paginate = sub.get_flag("paginate");
            let limit = *sub.get_one::<i64>("limit").expect("defaulted");
            if limit < 0 || (paginate && limit == 0) {
                return Err("--limit must be positive with --paginate, and never negative".into());
            }
            workload::Kind::Range {
                serializable: sub.get_one::<String>("consistency").map(String::as_str) == Some("s"),
                limit,
                prefix: sub.get_flag("prefix") || paginate,
                paginate,
            }
        }
        "txn-put" => {
            let ops = *sub.get_one::<usize>("txn-ops").expect("defaulted");
            if ops == 0 {
                return Err("--txn-ops must be positive".into());
            }
            workload::Kind::TxnPut { ops }
        }
        "lease-keepalive" => workload::Kind::LeaseKeepalive,
        "mixed" => {
            let read_ratio = *sub.get_one::<f64>("read-ratio").expect("defaulted");
            if !(0.0..=1.0).contains(&read_ratio) {
                return Err("--read-ratio must be 0..=1".into());
            }
            workload::Kind::Mixed { read_ratio }
        }
        "watch" => {
            let watchers = *sub.get_one::<usize>("watchers").expect("defaulted");
            let streams = sub
                .get_one::<usize>("streams")
                .copied()
                .unwrap_or(common.conns);
            if !(1..=CONCURRENCY_MAX).contains(&watchers) || !(1..=watchers).contains(&streams) {
                return Err("--watchers must be positive and --streams 1..=watchers".into());
            }
            if common.duration.is_some() && common.total == u64::MAX && common.rate == 0 {
                return Err("watch with --duration needs --rate or --total".into());
            }
            return watch::run(&common, watchers, streams).await;
        }
        other => return Err(format!("unknown workload {other}")),
    };
    workload::run(&common, kind, name).await
}

fn main() -> ExitCode {
    let matches = command().get_matches();
    let json = matches.get_flag("json");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("oxetcd-bench: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(matches)) {
        Ok(mut report) => {
            if json {
                println!("{}", report.json());
            } else {
                print!("{}", report.text());
            }
            if report.latencies_ns.is_empty() {
                eprintln!("oxetcd-bench: no request succeeded");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("oxetcd-bench: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(args: &str) -> Result<Common, String> {
        let matches = command()
            .try_get_matches_from(format!("oxetcd-bench {args}").split_whitespace())
            .map_err(|e| e.to_string())?;
        common_flags(&matches)
    }

    #[test]
    fn keys_are_padded_to_the_key_size() {
        let c = common("put --key-size 12 --key-space-size 1000").unwrap();
        assert_eq!(c.key(7), b"bench/000007".to_vec());
        assert_eq!(c.prefix_end(), b"bench0".to_vec());
        assert!(common("put --key-size 8 --key-space-size 1000").is_err());
    }

    #[test]
    fn duration_replaces_the_default_total() {
        let c = common("--duration 2 range").unwrap();
        assert_eq!(
            (c.total, c.duration),
            (u64::MAX, Some(Duration::from_secs(2)))
        );
        let c = common("put --duration 2 --total 5").unwrap();
        assert_eq!(c.total, 5);
    }

    #[test]
    fn prefix_end_carries() {
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
