//! The Watch service: one task per bidi stream (owned by [`ServerCtx::streams`]) multiplexing
//! many watchers over the watch hub.
//!
//! The task reads the client's requests, forwards the hub's messages for its watchers, and sends
//! progress notifications. Every response leaves through one bounded channel in the order the
//! task produced it, so a watcher's `created` response always precedes its events, and a progress
//! response follows every event it vouches for. When the task ends (client gone, stream error,
//! leader lost) every watcher it registered is removed from the hub.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use rand::Rng as _;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{EtcdError, ServerCtx};
use crate::auth::Access;
use crate::auth::requests::Need;
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::watch_server::{Watch, WatchServer};
use crate::proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use crate::proto::mvccpb::Event;
use crate::proto::oxetcdpb::Caller;
use crate::watch::{HubEvent, HubSink, HubWatcherId, SINK_CAPACITY, WatchHub, WatchSpec};

/// gRPC framing allowance on top of `--max-request-bytes` for incoming messages (etcd's
/// `grpcOverheadBytes`).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// Responses queued for the client before the stream task waits (and its sink fills up, turning
/// its watchers into catch-up watchers).
const OUTBOUND_CAPACITY: usize = 128;
/// The id etcd reports for "no watcher": failed creates and stream-wide progress.
const INVALID_WATCH_ID: i64 = -1;
/// How often a deferred stream-wide progress request is retried while watchers catch up.
const PROGRESS_RETRY: Duration = Duration::from_millis(100);
/// etcd's floor for `--watch-progress-notify-interval`.
const PROGRESS_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// Election timeouts without a leader after which a `hasleader` stream is cancelled.
const NO_LEADER_CHECKS_MAX: u32 = 3;

/// Cancel reasons, verbatim from etcd: clients match on them.
pub const REASON_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
pub const REASON_EMPTY_RANGE: &str = "mvcc: watcher range is empty";

pub struct WatchService {
    ctx: ServerCtx,
}

impl WatchService {
    pub fn new(ctx: ServerCtx) -> WatchService {
        WatchService { ctx }
    }
}

/// The service with etcd's message size limits: requests up to `--max-request-bytes` plus gRPC
/// overhead, responses unlimited.
pub fn service(ctx: ServerCtx) -> WatchServer<WatchService> {
    let decode_max = usize::try_from(ctx.config.request_bytes_max)
        .unwrap_or(usize::MAX)
        .saturating_add(GRPC_OVERHEAD_BYTES);
    WatchServer::new(WatchService::new(ctx))
        .max_decoding_message_size(decode_max)
        .max_encoding_message_size(usize::MAX)
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let require_leader = request
            .metadata()
            .get("hasleader")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "true");
        // Checked against each create request; a bad token refuses every watch on the stream.
        let caller = self.ctx.caller(&request).await;
        let inbound = request.into_inner();
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let (sink, hub_rx) = mpsc::channel(SINK_CAPACITY);
        let stream = WatchStream {
            _open: self.ctx.watch.open_stream(),
            hub: self.ctx.watch.clone(),
            ctx: self.ctx.clone(),
            caller,
            out: out_tx,
            sink,
            next_auto_id: 0,
            watchers: HashMap::new(),
            by_hub: HashMap::new(),
            progress_all_waiting: false,
        };
        self.ctx
            .streams
            .spawn("watch-stream", stream.run(inbound, hub_rx, require_leader))
            .map_err(|_| Status::from(EtcdError::Stopped))?;
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}

/// The stream's view of one of its watchers.
struct StreamWatcher {
    hub_id: HubWatcherId,
    fragment: bool,
    progress_notify: bool,
    /// No events were sent since the last progress tick.
    quiet: bool,
}

/// The client went away or the stream must end.
struct Ended;

/// State of one bidi stream, owned by its task.
struct WatchStream {
    /// Counts this stream in `etcd_debugging_mvcc_watch_stream_total` while it lives.
    _open: crate::watch::OpenStream,
    ctx: ServerCtx,
    /// Who opened the stream (while auth is enabled, watches need READ on their range).
    caller: Result<Caller, EtcdError>,
    hub: Arc<WatchHub>,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    /// Handed to the hub for every watcher of this stream.
    sink: HubSink,
    /// Where the search for the next server-chosen watch id starts.
    next_auto_id: i64,
    watchers: HashMap<i64, StreamWatcher>,
    by_hub: HashMap<HubWatcherId, i64>,
    /// A progress request arrived while some watcher was catching up; retried until answered.
    progress_all_waiting: bool,
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        for w in self.watchers.values() {
            self.hub.cancel(w.hub_id);
        }
    }
}

impl WatchStream {
    async fn run(
        mut self,
        mut inbound: Streaming<WatchRequest>,
        mut hub_rx: mpsc::Receiver<HubEvent>,
        require_leader: bool,
    ) {
        let period = progress_period(self.ctx.config.watch_progress_notify_interval);
        let mut progress_tick = tokio::time::interval_at(Instant::now() + period, period);
        progress_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut retry_tick = tokio::time::interval(PROGRESS_RETRY);
        retry_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let election_timeout = self
            .ctx
            .config
            .election_timeout
            .max(Duration::from_millis(1));
        let mut leader_tick = tokio::time::interval(election_timeout);
        leader_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut no_leader_checks = 0u32;
        let mut inbound_open = true;
        let out = self.out.clone();

        loop {
            let step = tokio::select! {
                () = self.ctx.stopping() => {
                    let _ = out.send(Err(EtcdError::Stopped.into())).await;
                    Err(Ended)
                }
                msg = inbound.next(), if inbound_open => match msg {
                    Some(Ok(req)) => self.on_request(req).await,
                    // The client closed its side; etcd keeps serving until the stream is torn down.
                    None => {
                        inbound_open = false;
                        Ok(())
                    }
                    Some(Err(status)) => {
                        tracing::debug!(code = ?status.code(), "watch stream closed by the client");
                        Err(Ended)
                    }
                },
                Some(ev) = hub_rx.recv() => self.on_hub_event(ev).await,
                _ = progress_tick.tick() => {
                    self.on_progress_tick();
                    Ok(())
                }
                _ = retry_tick.tick(), if self.progress_all_waiting => {
                    self.retry_progress_all();
                    Ok(())
                }
                _ = leader_tick.tick(), if require_leader => {
                    if self.ctx.node.status().leader_id == 0 {
                        no_leader_checks += 1;
                    } else {
                        no_leader_checks = 0;
                    }
                    if no_leader_checks >= NO_LEADER_CHECKS_MAX {
                        let _ = out.send(Err(EtcdError::NoLeader.into())).await;
                        Err(Ended)
                    } else {
                        Ok(())
                    }
                }
                _ = out.closed() => Err(Ended),
            };
            if step.is_err() {
                break;
            }
        }
        // Dropping `self` cancels the stream's watchers in the hub.
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Ended> {
        self.out.send(Ok(resp)).await.map_err(|_| Ended)
    }

    fn current_revision(&self) -> i64 {
        self.ctx.header_now().revision
    }

    async fn on_request(&mut self, req: WatchRequest) -> Result<(), Ended> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => self.cancel(cancel.watch_id).await,
            Some(RequestUnion::ProgressRequest(_)) => {
                if !self.progress_all_waiting {
                    self.progress_all_waiting = true;
                    self.retry_progress_all();
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: WatchCreateRequest) -> Result<(), Ended> {
        let WatchCreateRequest {
            mut key,
            range_end,
            start_revision,
            progress_notify,
            filters,
            prev_kv,
            watch_id,
            fragment,
        } = create;
        let permitted = self.caller.as_ref().is_ok_and(|caller| {
            let need = Need {
                key: key.clone(),
                range_end: range_end.clone(),
                access: Access::Read,
            };
            self.ctx.permit(caller, &[need], false).is_ok()
        });
        // "\0" is the smallest key: an empty key watches from the start of the key space.
        if key.is_empty() {
            key = vec![0];
        }
        let header_rev = self.current_revision();
        let refuse = |reason: String| WatchResponse {
            header: Some(self.ctx.header(header_rev)),
            watch_id: INVALID_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..WatchResponse::default()
        };
        if !permitted {
            // etcd words this reason as the gRPC status it would have sent.
            let denied = Status::from(EtcdError::PermissionDenied);
            return self
                .send(WatchResponse {
                    watch_id,
                    ..refuse(format!(
                        "rpc error: code = {:?} desc = {}",
                        denied.code(),
                        denied.message()
                    ))
                })
                .await;
        }
        if start_revision < 0 {
            return self.send(refuse(EtcdError::Compacted.to_string())).await;
        }
        // A range end of "\0" means "every key from `key` on" and is never empty.
        if !range_end.is_empty() && range_end != [0] && key >= range_end {
            return self.send(refuse(REASON_EMPTY_RANGE.to_owned())).await;
        }
        let id = if watch_id == 0 {
            while self.watchers.contains_key(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            let id = self.next_auto_id;
            self.next_auto_id += 1;
            id
        } else if self.watchers.contains_key(&watch_id) {
            return self.send(refuse(REASON_DUPLICATE_ID.to_owned())).await;
        } else {
            watch_id
        };

        // The created response goes out before the hub can produce an event for this watcher.
        self.send(WatchResponse {
            header: Some(self.ctx.header(header_rev)),
            watch_id: id,
            created: true,
            ..WatchResponse::default()
        })
        .await?;
        let spec = WatchSpec {
            key,
            range_end,
            start_rev: if start_revision == 0 {
                header_rev + 1
            } else {
                start_revision
            },
            prev_kv,
            no_put: filters.contains(&(FilterType::Noput as i32)),
            no_delete: filters.contains(&(FilterType::Nodelete as i32)),
        };
        let hub_id = self.hub.watch(spec, self.sink.clone());
        self.by_hub.insert(hub_id, id);
        self.watchers.insert(
            id,
            StreamWatcher {
                hub_id,
                fragment,
                progress_notify,
                quiet: true,
            },
        );
        Ok(())
    }

    async fn cancel(&mut self, watch_id: i64) -> Result<(), Ended> {
        // Unknown ids are ignored, as etcd does.
        let Some(w) = self.watchers.remove(&watch_id) else {
            return Ok(());
        };
        self.hub.cancel(w.hub_id);
        self.by_hub.remove(&w.hub_id);
        let header = self.ctx.header_now();
        self.send(WatchResponse {
            header: Some(header),
            watch_id,
            canceled: true,
            ..WatchResponse::default()
        })
        .await
    }

    async fn on_hub_event(&mut self, ev: HubEvent) -> Result<(), Ended> {
        match ev {
            HubEvent::Events {
                id,
                revision,
                events,
            } => {
                self.hub.events_received(events.len());
                // Messages for a watcher cancelled meanwhile are dropped.
                let Some(&watch_id) = self.by_hub.get(&id) else {
                    return Ok(());
                };
                let Some(w) = self.watchers.get_mut(&watch_id) else {
                    return Ok(());
                };
                w.quiet = false;
                let fragment = w.fragment;
                let resp = WatchResponse {
                    header: Some(self.ctx.header(revision)),
                    watch_id,
                    events,
                    ..WatchResponse::default()
                };
                self.send_events(resp, fragment).await?;
            }
            HubEvent::Compacted {
                id,
                compact_revision,
            } => {
                let Some(watch_id) = self.by_hub.remove(&id) else {
                    return Ok(());
                };
                self.watchers.remove(&watch_id);
                // etcd leaves the revision unset on this response.
                self.send(WatchResponse {
                    header: Some(self.ctx.header(0)),
                    watch_id,
                    canceled: true,
                    compact_revision,
                    ..WatchResponse::default()
                })
                .await?;
            }
            HubEvent::Progress {
                id: Some(id),
                revision,
            } => {
                let Some(&watch_id) = self.by_hub.get(&id) else {
                    return Ok(());
                };
                self.send(WatchResponse {
                    header: Some(self.ctx.header(revision)),
                    watch_id,
                    ..WatchResponse::default()
                })
                .await?;
            }
            HubEvent::Progress { id: None, revision } => {
                self.send(WatchResponse {
                    header: Some(self.ctx.header(revision)),
                    watch_id: INVALID_WATCH_ID,
                    ..WatchResponse::default()
                })
                .await?;
            }
        }
        if self.progress_all_waiting {
            self.retry_progress_all();
        }
        Ok(())
    }

    /// Sends an events response, split into fragments when the watcher allows it.
    async fn send_events(&self, resp: WatchResponse, fragment: bool) -> Result<(), Ended> {
        if !fragment {
            return self.send(resp).await;
        }
        let limit = usize::try_from(self.ctx.config.request_bytes_max).unwrap_or(usize::MAX);
        for part in split_fragments(resp, limit) {
            self.send(part).await?;
        }
        Ok(())
    }

    /// Asks the hub for progress on every watcher that had no events since the last tick.
    fn on_progress_tick(&mut self) {
        for w in self.watchers.values_mut().filter(|w| w.progress_notify) {
            if w.quiet {
                // Not sent when the watcher is catching up or its sink is full, as in etcd.
                self.hub.request_progress(w.hub_id);
            }
            w.quiet = true;
        }
    }

    /// Offers the stream-wide progress response; it stays waiting until every watcher of the
    /// stream is synced.
    fn retry_progress_all(&mut self) {
        let ids: Vec<HubWatcherId> = self.watchers.values().map(|w| w.hub_id).collect();
        if self.hub.request_progress_all(&ids, &self.sink) {
            self.progress_all_waiting = false;
        }
    }
}

/// Splits an events response that exceeds `limit` bytes into fragments, as etcd does: each part
/// holds as many events as fit under `limit` (at least one), and every part but the last has
/// `fragment` set. A response under the limit, or with fewer than two events, stays whole.
fn split_fragments(mut resp: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    if resp.events.len() < 2 || resp.encoded_len() < limit {
        return vec![resp];
    }
    let events = std::mem::take(&mut resp.events);
    resp.fragment = true;
    let base = resp.encoded_len();
    let mut parts = Vec::new();
    let mut part: Vec<Event> = Vec::new();
    let mut size = base;
    for ev in events {
        let len = event_field_len(&ev);
        if !part.is_empty() && size + len >= limit {
            parts.push(WatchResponse {
                events: std::mem::take(&mut part),
                ..resp.clone()
            });
            size = base;
        }
        size += len;
        part.push(ev);
    }
    parts.push(WatchResponse {
        events: part,
        fragment: false,
        ..resp
    });
    parts
}

/// Encoded size of one event inside `WatchResponse.events` (field 11): tag, length, body.
fn event_field_len(ev: &Event) -> usize {
    let body = ev.encoded_len();
    1 + prost::length_delimiter_len(body) + body
}

/// The progress interval with etcd's floor and up to a tenth of random jitter, so streams
/// opened together do not tick together.
fn progress_period(configured: Duration) -> Duration {
    let base = configured.max(PROGRESS_INTERVAL_MIN);
    let jitter_ms = u64::try_from(base.as_millis() / 10).unwrap_or(u64::MAX);
    base + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::ResponseHeader;
    use crate::proto::mvccpb::KeyValue;

    fn event(i: usize, value_len: usize) -> Event {
        Event {
            r#type: 0,
            kv: Some(KeyValue {
                key: format!("key{i}").into_bytes(),
                value: vec![b'x'; value_len],
                mod_revision: 7,
                ..KeyValue::default()
            }),
            prev_kv: None,
        }
    }

    fn response(events: Vec<Event>) -> WatchResponse {
        WatchResponse {
            header: Some(ResponseHeader {
                revision: 7,
                ..ResponseHeader::default()
            }),
            watch_id: 3,
            events,
            ..WatchResponse::default()
        }
    }

    #[test]
    fn small_or_single_event_responses_are_not_fragmented() {
        let small = response(vec![event(0, 10), event(1, 10)]);
        assert_eq!(split_fragments(small.clone(), 1024), vec![small]);
        let single = response(vec![event(0, 4096)]);
        assert_eq!(split_fragments(single.clone(), 1024), vec![single]);
    }

    #[test]
    fn large_responses_split_under_the_limit_and_only_the_last_is_final() {
        let events: Vec<Event> = (0..20).map(|i| event(i, 100 + i * 10)).collect();
        let whole = response(events.clone());
        let limit = 600;
        let parts = split_fragments(whole, limit);
        assert!(parts.len() > 2);
        for (n, part) in parts.iter().enumerate() {
            let last = n + 1 == parts.len();
            assert_eq!(part.fragment, !last);
            assert_eq!(
                (part.watch_id, part.header.as_ref().map(|h| h.revision)),
                (3, Some(7))
            );
            assert!(!part.events.is_empty());
            assert!(
                part.events.len() == 1 || part.encoded_len() < limit,
                "part {n} too big"
            );
        }
        // Each part holds as many events as fit: adding the next one would reach the limit.
        for pair in parts.windows(2) {
            let mut grown = pair[0].clone();
            grown.events.push(pair[1].events[0].clone());
            assert!(grown.encoded_len() >= limit);
        }
        let rejoined: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(rejoined, events);
    }

    #[test]
    fn progress_period_has_a_floor_and_bounded_jitter() {
        let period = progress_period(Duration::from_millis(1));
        assert!(period >= PROGRESS_INTERVAL_MIN && period <= PROGRESS_INTERVAL_MIN * 11 / 10);
        let period = progress_period(Duration::from_secs(600));
        assert!(period >= Duration::from_secs(600) && period <= Duration::from_secs(660));
    }
}
