//! Put-throughput load generator for etcd-compatible servers (oxetcd or etcd), used by
//! tests/bench/snapshot-install-stall.sh (tests/bench/compare.py uses oxetcd-bench).
//!
//! Usage: put_bench ENDPOINT CLIENTS TOTAL_REQUESTS [KEY_BYTES] [VALUE_BYTES]
//!                  [--conns N] [--max-seconds S]
//!                  [--cacert FILE [--cert FILE --key FILE]] [--user NAME:PASSWORD]
//!                  [--server-pids PID,...]
//!
//! CLIENTS tasks share `--conns` gRPC connections (default: one per client, at most 16) and
//! together issue TOTAL_REQUESTS puts of distinct keys (KEY_BYTES long, default 16) with
//! VALUE_BYTES values (default 256). The run stops early once `--max-seconds` (default 60) pass.
//! Prints `puts/s`, `p50_ms`, `p99_ms` and counts, one `name value` pair per line.
//!
//! `--cacert` connects over TLS (an `https://` ENDPOINT) trusting that CA; `--cert` and `--key`
//! add a client certificate (mutual TLS). `--user` authenticates each connection once, before
//! the clock starts: etcd-client sends the resulting token with every put and calls Authenticate
//! again only when a request fails with an invalid or expired token, so bcrypt's cost is not
//! part of the measurement but the server's token check and permission check on every put are.
//! `--server-pids` also prints `server_cpu_ticks`: the user+sys CPU time those processes used
//! while the clock ran (from /proc/PID/stat, in clock ticks), so connection set-up, TLS
//! handshakes and Authenticate's bcrypt are left out of it as they are of `puts/s`.
//! Only ever point it at a server on this machine (a loopback endpoint).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const DEFAULT_KEY_BYTES: usize = 16;
const DEFAULT_VALUE_BYTES: usize = 256;
const DEFAULT_MAX_SECONDS: u64 = 60;
const MAX_DEFAULT_CONNS: usize = 16;
const MAX_CLIENTS: usize = 4096;
const MAX_REQUESTS: u64 = 10_000_000;
const KEY_PREFIX: &str = "bench/";

struct Args {
    endpoint: String,
    clients: usize,
    total_requests: u64,
    key_bytes: usize,
    value_bytes: usize,
    conns: usize,
    max_duration: Duration,
    tls: Option<TlsFiles>,
    user: Option<(String, String)>,
    server_pids: Vec<u32>,
}

/// PEM files for an https:// endpoint: the CA to trust and an optional client certificate.
#[derive(Debug, PartialEq)]
struct TlsFiles {
    ca_cert: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
}

fn usage() -> String {
    "usage: put_bench ENDPOINT CLIENTS TOTAL_REQUESTS [KEY_BYTES] [VALUE_BYTES] \
     [--conns N] [--max-seconds S] [--cacert FILE [--cert FILE --key FILE]] \
     [--user NAME:PASSWORD] [--server-pids PID,...]"
        .to_string()
}

fn parse_args(args: impl IntoIterator<Item = String>) -> anyhow::Result<Args> {
    let mut positional = Vec::new();
    let mut conns = None;
    let mut max_seconds = DEFAULT_MAX_SECONDS;
    let mut ca_cert = None;
    let mut client_cert = None;
    let mut client_key = None;
    let mut user = None;
    let mut server_pids = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--conns" => {
                let value = args.next().context("--conns needs a value")?;
                conns = Some(value.parse::<usize>().context("--conns")?);
            }
            "--max-seconds" => {
                let value = args.next().context("--max-seconds needs a value")?;
                max_seconds = value.parse::<u64>().context("--max-seconds")?;
            }
            "--cacert" => {
                ca_cert = Some(PathBuf::from(args.next().context("--cacert needs a file")?))
            }
            "--cert" => {
                client_cert = Some(PathBuf::from(args.next().context("--cert needs a file")?))
            }
            "--key" => client_key = Some(PathBuf::from(args.next().context("--key needs a file")?)),
            "--user" => {
                let value = args.next().context("--user needs NAME:PASSWORD")?;
                let (name, password) = value
                    .split_once(':')
                    .context("--user takes NAME:PASSWORD")?;
                if name.is_empty() {
                    bail!("--user: the name is empty");
                }
                user = Some((name.to_string(), password.to_string()));
            }
            "--server-pids" => {
                let value = args.next().context("--server-pids needs PID,...")?;
                server_pids = value
                    .split(',')
                    .map(|pid| pid.parse::<u32>().context("--server-pids"))
                    .collect::<anyhow::Result<_>>()?;
            }
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            _ => positional.push(arg),
        }
    }
    if !(3..=5).contains(&positional.len()) {
        bail!("{}", usage());
    }
    let endpoint = positional[0].clone();
    let clients: usize = positional[1].parse().context("CLIENTS")?;
    let total_requests: u64 = positional[2].parse().context("TOTAL_REQUESTS")?;
    let key_bytes = match positional.get(3) {
        Some(text) => text.parse().context("KEY_BYTES")?,
        None => DEFAULT_KEY_BYTES,
    };
    let value_bytes = match positional.get(4) {
        Some(text) => text.parse().context("VALUE_BYTES")?,
        None => DEFAULT_VALUE_BYTES,
    };
    if !(1..=MAX_CLIENTS).contains(&clients) {
        bail!("CLIENTS must be 1..={MAX_CLIENTS}");
    }
    if !(1..=MAX_REQUESTS).contains(&total_requests) {
        bail!("TOTAL_REQUESTS must be 1..={MAX_REQUESTS}");
    }
    let index_digits = (total_requests - 1).to_string().len();
    if key_bytes < KEY_PREFIX.len() + index_digits {
        bail!(
            "KEY_BYTES must be at least {} for {total_requests} distinct keys",
            KEY_PREFIX.len() + index_digits
        );
    }
    if max_seconds == 0 {
        bail!("--max-seconds must be positive");
    }
    let conns = conns
        .unwrap_or(clients.min(MAX_DEFAULT_CONNS))
        .clamp(1, clients);
    let client = match (client_cert, client_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => bail!("--cert and --key go together"),
    };
    let tls = match ca_cert {
        Some(ca_cert) => Some(TlsFiles { ca_cert, client }),
        None if client.is_some() => bail!("--cert and --key need --cacert"),
        None => None,
    };
    if tls.is_some() != endpoint.starts_with("https://") {
        bail!("an https:// ENDPOINT goes with --cacert, and --cacert with an https:// ENDPOINT");
    }
    Ok(Args {
        endpoint,
        clients,
        total_requests,
        key_bytes,
        value_bytes,
        conns,
        max_duration: Duration::from_secs(max_seconds),
        tls,
        user,
        server_pids,
    })
}

/// User+sys CPU time of a /proc/PID/stat line, in clock ticks (utime and stime, the 14th and 15th
/// fields; the command name in parentheses may itself hold spaces and parentheses).
fn stat_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    let (_, after_name) = stat.rsplit_once(')').context("no ')' in /proc/PID/stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .context("short /proc/PID/stat")?
            .parse()
            .context("/proc/PID/stat field")
    };
    Ok(field(11)? + field(12)?)
}

/// The summed CPU ticks of `pids` so far.
fn cpu_ticks(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        total += stat_cpu_ticks(&stat)?;
    }
    Ok(total)
}

fn connect_options(args: &Args) -> anyhow::Result<etcd_client::ConnectOptions> {
    let mut options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(10));
    if let Some(tls) = &args.tls {
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let mut tls_options = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca_cert)?));
        if let Some((cert, key)) = &tls.client {
            tls_options =
                tls_options.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls_options);
    }
    if let Some((name, password)) = &args.user {
        options = options.with_user(name.as_str(), password.as_str());
    }
    Ok(options)
}

/// Key number `index`, zero-padded to exactly `key_bytes` bytes.
fn key_for(index: u64, key_bytes: usize) -> Vec<u8> {
    let width = key_bytes - KEY_PREFIX.len();
    format!("{KEY_PREFIX}{index:0width$}").into_bytes()
}

/// The `fraction` quantile of sorted latencies, in milliseconds (nearest rank).
fn quantile_ms(sorted_us: &[u64], fraction: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted_us.len() as f64) * fraction).ceil() as usize;
    let index = rank.clamp(1, sorted_us.len()) - 1;
    sorted_us[index] as f64 / 1000.0
}

struct ClientReport {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    let options = connect_options(&args)?;
    let mut connections = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        let client = etcd_client::Client::connect([args.endpoint.as_str()], Some(options.clone()))
            .await
            .with_context(|| format!("connecting to {}", args.endpoint))?;
        connections.push(client);
    }
    // One put per connection before the clock starts, so connection set-up is not measured.
    for client in &mut connections {
        client
            .put(
                format!("{KEY_PREFIX}warmup"),
                vec![b'w'; args.value_bytes],
                None,
            )
            .await
            .context("warm-up put")?;
    }

    let value = Arc::new(vec![b'v'; args.value_bytes]);
    let next_index = Arc::new(AtomicU64::new(0));
    let cpu_ticks_before = cpu_ticks(&args.server_pids)?;
    let started = Instant::now();
    let deadline = started + args.max_duration;
    let mut tasks = Vec::with_capacity(args.clients);
    for client_index in 0..args.clients {
        let mut client = connections[client_index % args.conns].clone();
        let value = Arc::clone(&value);
        let next_index = Arc::clone(&next_index);
        let total_requests = args.total_requests;
        let key_bytes = args.key_bytes;
        tasks.push(tokio::spawn(async move {
            let mut report = ClientReport {
                latencies_us: Vec::new(),
                errors: 0,
                first_error: None,
            };
            loop {
                let index = next_index.fetch_add(1, Ordering::Relaxed);
                if index >= total_requests || Instant::now() >= deadline {
                    break;
                }
                let sent = Instant::now();
                let result = client
                    .put(key_for(index, key_bytes), value.as_slice(), None)
                    .await;
                let latency_us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                match result {
                    Ok(_) => report.latencies_us.push(latency_us),
                    Err(err) => {
                        report.errors += 1;
                        report.first_error.get_or_insert_with(|| err.to_string());
                    }
                }
            }
            report
        }));
    }
    let mut latencies_us = Vec::with_capacity(usize::try_from(args.total_requests).unwrap_or(0));
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let report = task.await.context("client task panicked")?;
        latencies_us.extend(report.latencies_us);
        errors += report.errors;
        if first_error.is_none() {
            first_error = report.first_error;
        }
    }
    let elapsed = started.elapsed();
    let server_cpu_ticks = cpu_ticks(&args.server_pids)?.saturating_sub(cpu_ticks_before);
    latencies_us.sort_unstable();
    let completed = latencies_us.len() as u64;
    let puts_per_second = completed as f64 / elapsed.as_secs_f64();

    println!("endpoint {}", args.endpoint);
    println!("clients {}", args.clients);
    println!("conns {}", args.conns);
    println!("key_bytes {}", args.key_bytes);
    println!("value_bytes {}", args.value_bytes);
    println!("requested {}", args.total_requests);
    println!("completed {completed}");
    println!("errors {errors}");
    println!("elapsed_s {:.3}", elapsed.as_secs_f64());
    println!("puts/s {puts_per_second:.1}");
    println!("p50_ms {:.3}", quantile_ms(&latencies_us, 0.50));
    println!("p99_ms {:.3}", quantile_ms(&latencies_us, 0.99));
    if !args.server_pids.is_empty() {
        println!("server_cpu_ticks {server_cpu_ticks}");
    }
    if let Some(error) = first_error {
        eprintln!("first error: {error}");
    }
    if completed == 0 {
        bail!("no put succeeded");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_requested_length() {
        assert_eq!(key_for(7, 16), b"bench/0000000007".to_vec());
        assert_eq!(key_for(123, 10).len(), 10);
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let sorted: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(quantile_ms(&sorted, 0.50), 50.0);
        assert_eq!(quantile_ms(&sorted, 0.99), 99.0);
        assert_eq!(quantile_ms(&sorted[..1], 0.99), 1.0);
    }

    fn parse(line: &str) -> anyhow::Result<Args> {
        parse_args(line.split_whitespace().map(str::to_string))
    }

    #[test]
    fn plain_arguments_still_parse() {
        let args = parse("http://127.0.0.1:2379 64 20000 16 256 --max-seconds 30").unwrap();
        assert_eq!(
            (args.clients, args.conns, args.total_requests),
            (64, 16, 20000)
        );
        assert_eq!(args.max_duration, Duration::from_secs(30));
        assert!(args.tls.is_none() && args.user.is_none());
    }

    #[test]
    fn tls_and_user_parse() {
        let args = parse(
            "https://127.0.0.1:2379 1 10 --cacert ca.pem --cert c.pem --key k.pem --user bench:p:w",
        )
        .unwrap();
        assert_eq!(
            args.tls,
            Some(TlsFiles {
                ca_cert: "ca.pem".into(),
                client: Some(("c.pem".into(), "k.pem".into())),
            })
        );
        assert_eq!(args.user, Some(("bench".into(), "p:w".into())));
    }

    #[test]
    fn stat_cpu_ticks_sums_utime_and_stime() {
        let stat = "42 (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 9 0 5 0 0";
        assert_eq!(stat_cpu_ticks(stat).unwrap(), 287);
        assert!(stat_cpu_ticks("42 (x) S 1").is_err());
    }

    #[test]
    fn inconsistent_security_arguments_are_refused() {
        assert!(parse("https://127.0.0.1:2379 1 10").is_err());
        assert!(parse("http://127.0.0.1:2379 1 10 --cacert ca.pem").is_err());
        assert!(parse("https://127.0.0.1:2379 1 10 --cacert ca.pem --cert c.pem").is_err());
        assert!(parse("http://127.0.0.1:2379 1 10 --cert c.pem --key k.pem").is_err());
        assert!(parse("http://127.0.0.1:2379 1 10 --user nopassword").is_err());
        assert!(parse("http://127.0.0.1:2379 1 10 --user :pw").is_err());
    }
}
