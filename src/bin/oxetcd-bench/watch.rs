//! The watch workload: `--watchers` watchers on the key prefix, spread over `--streams` watch
//! streams, while `--clients` put `--total` keys at `--rate`; each event's delivery latency is
//! the time from its put being sent to the event reaching a watcher (the put's value carries the
//! send time), so one put yields one latency per watcher.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use oxetcd::proto::etcdserverpb::{
    PutRequest, WatchCreateRequest, WatchRequest, kv_client::KvClient, watch_client::WatchClient,
    watch_request,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::report::Report;
use crate::{Common, CpuClock, Issuer, connect, spawn_progress};

/// How long to wait for events still missing once the last put was answered.
const STRAGGLER_WAIT: Duration = Duration::from_secs(10);
/// Bytes at the start of a value that carry its send time.
const STAMP_BYTES: usize = 8;

/// What one stream's receiver measured.
#[derive(Default)]
struct StreamResult {
    latencies_ns: Vec<u64>,
    last_event: Option<Instant>,
    error: Option<String>,
}

pub async fn run(common: &Common, watchers: usize, streams: usize) -> Result<Report, String> {
    if common.val_size < STAMP_BYTES {
        return Err(format!("watch needs --val-size of at least {STAMP_BYTES}"));
    }
    let common = Arc::new(common.clone());
    let channels = connect(&common).await?;
    let epoch = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut receivers = Vec::with_capacity(streams);
    // Held until the end: dropping a sender half-closes its stream.
    let mut senders = Vec::with_capacity(streams);
    for s in 0..streams {
        let on_stream = watchers / streams + usize::from(s < watchers % streams);
        let mut client = WatchClient::new(channels[s % channels.len()].clone());
        // Every create is queued before the call: a Go server sends the stream's headers only
        // with its first response, which the call waits for.
        let (tx, rx) = mpsc::channel(on_stream.max(1));
        for _ in 0..on_stream {
            let create = WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: common.prefix.clone().into_bytes(),
                        range_end: common.prefix_end(),
                        ..WatchCreateRequest::default()
                    },
                )),
            };
            tx.send(create)
                .await
                .map_err(|_| "the watch stream closed".to_owned())?;
        }
        let mut events = client
            .watch(ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("opening a watch stream: {}", e.message()))?
            .into_inner();
        let mut created = 0;
        while created < on_stream {
            match events.message().await {
                Ok(Some(response)) if response.created => created += 1,
                Ok(Some(response)) if response.canceled => {
                    return Err(format!("watch refused: {}", response.cancel_reason));
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err("the watch stream ended".into()),
                Err(e) => return Err(format!("watch stream: {}", e.message())),
            }
        }
        senders.push(tx);
        let received = Arc::clone(&received);
        let mut stop = stop_rx.clone();
        receivers.push(tokio::spawn(async move {
            let mut result = StreamResult::default();
            loop {
                let message = tokio::select! {
                    _ = stop.changed() => break,
                    message = events.message() => message,
                };
                let response = match message {
                    Ok(Some(response)) => response,
                    Ok(None) => {
                        result.error = Some("the watch stream ended".into());
                        break;
                    }
                    Err(e) => {
                        result.error = Some(format!("watch stream: {}", e.message()));
                        break;
                    }
                };
                if response.canceled {
                    result.error = Some(format!("watch canceled: {}", response.cancel_reason));
                    break;
                }
                let now = Instant::now();
                let now_ns =
                    u64::try_from(now.duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
                for event in &response.events {
                    let Some(kv) = &event.kv else { continue };
                    let Some(stamp) = kv.value.get(..STAMP_BYTES) else {
                        continue;
                    };
                    let sent_ns = u64::from_le_bytes(stamp.try_into().expect("8 bytes"));
                    result.latencies_ns.push(now_ns.saturating_sub(sent_ns));
                    received.fetch_add(1, Ordering::Relaxed);
                }
                if !response.events.is_empty() {
                    result.last_event = Some(now);
                }
            }
            result
        }));
    }

    let cpu = CpuClock::start(&common)?;
    let issuer = Arc::new(Issuer::new(&common));
    let progress_stop = Arc::new(AtomicBool::new(false));
    let progress = spawn_progress(Arc::clone(&issuer), &common, Arc::clone(&progress_stop));
    let put_errors = Arc::new(AtomicU64::new(0));
    let first_put_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut putters = Vec::with_capacity(common.clients);
    for client in 0..common.clients {
        let mut kv = KvClient::new(channels[client % channels.len()].clone());
        let issuer = Arc::clone(&issuer);
        let common = Arc::clone(&common);
        let put_errors = Arc::clone(&put_errors);
        let first_put_error = Arc::clone(&first_put_error);
        putters.push(tokio::spawn(async move {
            let mut ok = 0u64;
            while let Some(seq) = issuer.next().await {
                let mut value = vec![b'v'; common.val_size];
                let sent_ns = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                value[..STAMP_BYTES].copy_from_slice(&sent_ns.to_le_bytes());
                let put = PutRequest {
                    key: common.key_for(seq),
                    value,
                    ..PutRequest::default()
                };
                match kv.put(put).await {
                    Ok(_) => ok += 1,
                    Err(status) => {
                        put_errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut first) = first_put_error.lock() {
                            first.get_or_insert_with(|| status.message().to_owned());
                        }
                    }
                }
                issuer.done.fetch_add(1, Ordering::Relaxed);
            }
            ok
        }));
    }
    let mut puts = 0;
    for putter in putters {
        puts += putter
            .await
            .map_err(|e| format!("a put task failed: {e}"))?;
    }
    let expected = puts * watchers as u64;
    let give_up = Instant::now() + STRAGGLER_WAIT;
    while received.load(Ordering::Relaxed) < expected && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_tx.send(true);
    let mut report = Report {
        op: "watch".to_owned(),
        ..Report::default()
    };
    let mut last_event = None;
    for receiver in receivers {
        let result = receiver
            .await
            .map_err(|e| format!("a watch task failed: {e}"))?;
        report.latencies_ns.extend(result.latencies_ns);
        last_event = last_event.max(result.last_event);
        if report.first_error.is_none() {
            report.first_error = result.error;
        }
    }
    drop(senders);
    let end = last_event.unwrap_or_else(Instant::now);
    report.elapsed = end.saturating_duration_since(issuer.started());
    cpu.stop(&mut report)?;
    progress_stop.store(true, Ordering::Relaxed);
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    let delivered = report.latencies_ns.len() as u64;
    let put_errors = put_errors.load(Ordering::Relaxed);
    report.errors = expected.saturating_sub(delivered) + put_errors;
    if report.first_error.is_none() {
        report.first_error = first_put_error.lock().ok().and_then(|e| e.clone());
    }
    if report.first_error.is_none() && delivered < expected {
        report.first_error = Some(format!("{} events never arrived", expected - delivered));
    }
    report.extra.insert("puts".into(), puts.into());
    report.extra.insert("put_errors".into(), put_errors.into());
    report.extra.insert("watchers".into(), watchers.into());
    report.extra.insert("streams".into(), streams.into());
    report
        .extra
        .insert("events_expected".into(), expected.into());
    Ok(report)
}
