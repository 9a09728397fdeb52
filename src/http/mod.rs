//! The plain HTTP endpoints served beside gRPC on the client URLs and alone on the metrics URLs:
//! `/health`, `/livez`, `/readyz` (and `/livez/<check>`, `/readyz/<check>`), `/version` and
//! `/metrics`; and, on the client URLs only, etcd's JSON gateway (`gateway.rs`).
//!
//! Behaviour follows etcd's `etcdhttp` package: `/health` answers JSON
//! `{"health":"true","reason":""}` (503 with a reason such as `RAFT NO LEADER` or `ALARM NOSPACE`
//! when unhealthy); `/livez` and `/readyz` run named checks and answer `ok\n` (with
//! `[+]<check> ok` lines first when `?verbose` is given), or 503 listing every check. Only GET
//! (and HEAD) are served; other methods get 405. Beside etcd's `serializable_read`, `/livez`
//! runs oxetcd's `loop_progress`: it fails while the raft or apply thread has been stuck in one
//! step for [`LOOP_STALL_THRESHOLD`], so a wedged member gets restarted by its prober.

pub mod gateway;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::alarm::{ALARM_CORRUPT, ALARM_NOSPACE};
use crate::api::ServerCtx;
use crate::api::kv::probe_read;
use crate::proto::etcdserverpb::AlarmType;
use crate::version::{ETCD_API_VERSION, ETCD_CLUSTER_VERSION, OXETCD_VERSION};

/// Produces the Prometheus text exposition for `/metrics`.
pub type MetricsText = Arc<dyn Fn() -> String + Send + Sync>;

/// Content type of the Prometheus text format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

#[derive(Clone)]
struct HttpState {
    ctx: ServerCtx,
    metrics: MetricsText,
}

/// The HTTP endpoints; `/metrics` serves what `metrics` returns.
pub fn router(ctx: ServerCtx, metrics: MetricsText) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/livez/{check}", get(livez_one))
        .route("/readyz", get(readyz))
        .route("/readyz/{check}", get(readyz_one))
        .route("/version", get(version))
        .route("/metrics", get(metrics_text))
        .with_state(HttpState { ctx, metrics })
}

/// The query parameters the health endpoints understand.
#[derive(Debug, Default, PartialEq, Eq)]
struct HealthQuery {
    /// `exclude=` values (alarm names for `/health`, check names for `/livez` and `/readyz`).
    exclude: BTreeSet<String>,
    /// `serializable=true`.
    serializable: bool,
    /// `verbose` present (with any value).
    verbose: bool,
}

impl HealthQuery {
    fn parse(query: Option<&str>) -> HealthQuery {
        let mut q = HealthQuery::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "exclude" if !value.is_empty() => {
                    q.exclude.insert(value.into_owned());
                }
                "serializable" => q.serializable = value == "true",
                "verbose" => q.verbose = true,
                _ => {}
            }
        }
        q
    }
}

/// The `/health` answer.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct Health {
    health: &'static str,
    reason: String,
}

async fn health(State(state): State<HttpState>, RawQuery(query): RawQuery) -> Response {
    let q = HealthQuery::parse(query.as_deref());
    let verdict = check_health(&state.ctx, &q.exclude, q.serializable).await;
    let metrics = &state.ctx.metrics;
    match &verdict {
        Ok(()) => metrics.health_success.inc(),
        Err(_) => metrics.health_failures.inc(),
    }
    let (status, body) = match verdict {
        Ok(()) => {
            tracing::debug!("serving /health true");
            let body = Health {
                health: "true",
                reason: String::new(),
            };
            (StatusCode::OK, json(&body))
        }
        Err(reason) => {
            tracing::warn!(%reason, "serving /health false");
            let body = Health {
                health: "false",
                reason,
            };
            // etcd writes failures with http.Error, which ends the body with a newline.
            (StatusCode::SERVICE_UNAVAILABLE, json(&body) + "\n")
        }
    };
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("a struct of strings always serializes")
}

/// etcd's `/health` checks, in order: alarms not excluded, a leader (unless serializable), and a
/// one-key keys-only range (the API layer's [`probe_read`]).
async fn check_health(
    ctx: &ServerCtx,
    excluded_alarms: &BTreeSet<String>,
    serializable: bool,
) -> Result<(), String> {
    for (_member_id, alarm) in ctx.alarms.list() {
        let name = AlarmType::try_from(alarm).map_or("UNKNOWN", |a| a.as_str_name());
        if excluded_alarms.contains(name) {
            continue;
        }
        return Err(match alarm {
            ALARM_NOSPACE => "ALARM NOSPACE",
            ALARM_CORRUPT => "ALARM CORRUPT",
            _ => "ALARM UNKNOWN",
        }
        .to_string());
    }
    if !serializable && ctx.node.status().leader_id == 0 {
        return Err("RAFT NO LEADER".to_string());
    }
    probe_read(ctx, !serializable)
        .await
        .map_err(|e| format!("RANGE ERROR:{e}"))
}

/// The named checks behind `/livez` and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    DataCorruption,
    SerializableRead,
    /// The raft and apply threads are not stuck in one step (oxetcd's own check).
    LoopProgress,
    LinearizableRead,
    NonLearner,
}

/// How long the raft or apply thread may spend in one step of its loop before `/livez` fails.
/// A step is one wake-up: a Ready (with its fsync) on the raft thread, one batch of entries or
/// a snapshot install on the apply thread. etcd calls a 1 s WAL fsync slow and a 100 ms apply
/// slow; 10 s is ten times the default election timeout, so a raft thread that long gone has
/// lost its leadership anyway, yet a slow disk or a big batch does not get a working member
/// restarted. Only installing a very large snapshot from the leader could take longer.
const LOOP_STALL_THRESHOLD: Duration = Duration::from_secs(10);

const LIVEZ_CHECKS: &[Check] = &[Check::SerializableRead, Check::LoopProgress];
const READYZ_CHECKS: &[Check] = &[
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
    Check::NonLearner,
];

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LoopProgress => "loop_progress",
            Check::LinearizableRead => "linearizable_read",
            Check::NonLearner => "non_learner",
        }
    }

    async fn run(self, ctx: &ServerCtx) -> Result<(), String> {
        match self {
            Check::DataCorruption => {
                if ctx.alarms.corrupt_active() {
                    Err("alarm activated: CORRUPT".to_string())
                } else {
                    Ok(())
                }
            }
            Check::SerializableRead => probe_read(ctx, false).await.map_err(|e| e.to_string()),
            Check::LoopProgress => match ctx.node.stalled_thread(LOOP_STALL_THRESHOLD) {
                Some((thread, busy)) => Err(format!(
                    "the {thread} thread has been stuck in one step for {}s",
                    busy.as_secs()
                )),
                None => Ok(()),
            },
            Check::LinearizableRead => probe_read(ctx, true).await.map_err(|e| e.to_string()),
            Check::NonLearner => {
                let membership = ctx.membership.read().unwrap_or_else(|p| p.into_inner());
                let me = membership.member_id;
                if membership
                    .members
                    .iter()
                    .any(|m| m.id == me && m.is_learner)
                {
                    Err("this member is a learner".to_string())
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// Runs `checks` in order and renders the answer the way etcd does.
async fn run_checks(ctx: &ServerCtx, path: &str, checks: &[Check], verbose: bool) -> Response {
    let mut lines = String::new();
    let mut failed = false;
    for check in checks {
        match check.run(ctx).await {
            Ok(()) => lines.push_str(&format!("[+]{} ok\n", check.name())),
            Err(e) => {
                failed = true;
                lines.push_str(&format!("[-]{} failed: {e}\n", check.name()));
            }
        }
    }
    let (status, body) = if failed {
        tracing::warn!(path, reason = %lines.trim_end(), "health check failed");
        (StatusCode::SERVICE_UNAVAILABLE, lines + "\n")
    } else if verbose {
        (StatusCode::OK, lines + "ok\n")
    } else {
        (StatusCode::OK, "ok\n".to_string())
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(TEXT_CONTENT_TYPE),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The checks of `all` not named in `?exclude=`; unknown names are ignored (with a warning), as
/// etcd does for compatibility.
fn filter_checks(all: &[Check], excluded: &BTreeSet<String>) -> Vec<Check> {
    let unknown: Vec<&String> = excluded
        .iter()
        .filter(|name| !all.iter().any(|c| c.name() == name.as_str()))
        .collect();
    if !unknown.is_empty() {
        tracing::warn!(missing_health_checks = ?unknown, "some health checks cannot be excluded");
    }
    all.iter()
        .copied()
        .filter(|c| !excluded.contains(c.name()))
        .collect()
}

async fn livez(State(state): State<HttpState>, RawQuery(query): RawQuery) -> Response {
    let q = HealthQuery::parse(query.as_deref());
    let checks = filter_checks(LIVEZ_CHECKS, &q.exclude);
    run_checks(&state.ctx, "/livez", &checks, q.verbose).await
}

async fn readyz(State(state): State<HttpState>, RawQuery(query): RawQuery) -> Response {
    let q = HealthQuery::parse(query.as_deref());
    let checks = filter_checks(READYZ_CHECKS, &q.exclude);
    run_checks(&state.ctx, "/readyz", &checks, q.verbose).await
}

async fn livez_one(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    one_check(&state.ctx, "/livez", LIVEZ_CHECKS, &name, query.as_deref()).await
}

async fn readyz_one(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    one_check(
        &state.ctx,
        "/readyz",
        READYZ_CHECKS,
        &name,
        query.as_deref(),
    )
    .await
}

async fn one_check(
    ctx: &ServerCtx,
    root: &str,
    all: &[Check],
    name: &str,
    query: Option<&str>,
) -> Response {
    let Some(check) = all.iter().copied().find(|c| c.name() == name) else {
        return (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    };
    let q = HealthQuery::parse(query);
    run_checks(ctx, &format!("{root}/{name}"), &[check], q.verbose).await
}

/// The `/version` answer.
#[derive(Debug, Serialize)]
struct Versions {
    etcdserver: &'static str,
    etcdcluster: &'static str,
    oxetcd: &'static str,
}

async fn version() -> Response {
    axum::Json(Versions {
        etcdserver: ETCD_API_VERSION,
        etcdcluster: ETCD_CLUSTER_VERSION,
        oxetcd: OXETCD_VERSION,
    })
    .into_response()
}

async fn metrics_text(State(state): State<HttpState>) -> Response {
    let metrics = state.metrics.clone();
    let text = tokio::task::spawn_blocking(move || metrics())
        .await
        .unwrap_or_default();
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(METRICS_CONTENT_TYPE),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_follows_etcd() {
        let q = HealthQuery::parse(Some(
            "exclude=NOSPACE&exclude=CORRUPT&exclude=&serializable=true",
        ));
        assert_eq!(
            q.exclude,
            ["CORRUPT", "NOSPACE"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        );
        assert!(q.serializable);
        assert!(!q.verbose);

        let q = HealthQuery::parse(Some("verbose&serializable=1"));
        assert!(q.verbose);
        assert!(!q.serializable, "only the literal \"true\" counts");
        assert_eq!(HealthQuery::parse(None), HealthQuery::default());
    }

    #[test]
    fn excluding_checks_keeps_the_order_and_ignores_unknown_names() {
        let excluded: BTreeSet<String> = ["linearizable_read", "no_such_check"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            filter_checks(READYZ_CHECKS, &excluded),
            vec![
                Check::DataCorruption,
                Check::SerializableRead,
                Check::NonLearner
            ]
        );
    }

    #[test]
    fn health_and_version_bodies_match_etcd() {
        let ok = Health {
            health: "true",
            reason: String::new(),
        };
        assert_eq!(json(&ok), r#"{"health":"true","reason":""}"#);
        let versions = Versions {
            etcdserver: ETCD_API_VERSION,
            etcdcluster: ETCD_CLUSTER_VERSION,
            oxetcd: OXETCD_VERSION,
        };
        assert_eq!(
            json(&versions),
            format!(
                r#"{{"etcdserver":"3.5.0","etcdcluster":"3.5.0","oxetcd":"{OXETCD_VERSION}"}}"#
            )
        );
    }
}
