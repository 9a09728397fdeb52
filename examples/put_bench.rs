//! Put-throughput load generator for etcd-compatible servers (oxetcd or etcd), used by
//! tests/bench/put-throughput.sh.
//!
//! Usage: put_bench ENDPOINT CLIENTS TOTAL_REQUESTS [KEY_BYTES] [VALUE_BYTES]
//!                  [--conns N] [--max-seconds S]
//!
//! CLIENTS tasks share `--conns` gRPC connections (default: one per client, at most 16) and
//! together issue TOTAL_REQUESTS puts of distinct keys (KEY_BYTES long, default 16) with
//! VALUE_BYTES values (default 256). The run stops early once `--max-seconds` (default 60) pass.
//! Prints `puts/s`, `p50_ms`, `p99_ms` and counts, one `name value` pair per line.
//! Only ever point it at a server on this machine (a loopback endpoint).

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
}

fn usage() -> String {
    "usage: put_bench ENDPOINT CLIENTS TOTAL_REQUESTS [KEY_BYTES] [VALUE_BYTES] \
     [--conns N] [--max-seconds S]"
        .to_string()
}

fn parse_args() -> anyhow::Result<Args> {
    let mut positional = Vec::new();
    let mut conns = None;
    let mut max_seconds = DEFAULT_MAX_SECONDS;
    let mut args = std::env::args().skip(1);
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
    Ok(Args {
        endpoint,
        clients,
        total_requests,
        key_bytes,
        value_bytes,
        conns,
        max_duration: Duration::from_secs(max_seconds),
    })
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
    let args = parse_args()?;
    let mut connections = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10));
        let client = etcd_client::Client::connect([args.endpoint.as_str()], Some(options))
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
}
