//! Background jobs: attribute publishing, SIGHUP log reopening and the auto-compactor. Each runs
//! until its task set (`jobs`) stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::api::ServerCtx;
use crate::config::{AutoCompaction, Config, etcd_url_string};
use crate::proto::oxetcdpb::MemberAttributes;

/// Publishes this member's name and client URLs through raft (etcd's attribute publishing),
/// retrying until it is applied, so every member lists them; then sets `published` (once a
/// read barrier passes when the member list already has them, as after a restart with
/// unchanged flags).
pub(super) async fn publish_attributes(
    ctx: ServerCtx,
    config: Arc<Config>,
    published: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let member_id = ctx.node.config().member_id;
    let attrs = MemberAttributes {
        member_id,
        name: config.name.clone(),
        client_urls: config
            .advertise_client_urls
            .iter()
            .map(etcd_url_string)
            .collect(),
    };
    loop {
        let current = ctx
            .membership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .members
            .iter()
            .find(|m| m.id == member_id)
            .map(|m| (m.name.clone(), m.client_ur_ls.clone()));
        if current == Some((attrs.name.clone(), attrs.client_urls.clone())) {
            // Nothing to publish, but wait as etcd's publish (always through raft) does: for a
            // leader and this member's catching up with it, so READY=1 means a healthy member.
            tokio::select! {
                result = ctx.node.read_barrier() => match result {
                    Ok(()) => {
                        published.send_replace(true);
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "waiting for a leader before serving clients"),
                },
                _ = shutdown.wait_for(|s| *s) => return,
            }
        } else if ctx.node.status().leader_id != 0 {
            match ctx
                .node
                .propose(attrs.clone(), crate::node::Origin::Member)
                .await
            {
                Ok(_) => {
                    tracing::info!(client_urls = ?attrs.client_urls, "published local member to cluster through raft");
                    published.send_replace(true);
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "publishing member attributes failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.heartbeat_interval()) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
/// SIGHUP (systemd's reload, logrotate's postrotate) reopens the log file.
pub(super) async fn reopen_log_on_hangup(mut shutdown: watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; the log file will not be reopened");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                crate::telemetry::request_log_reopen();
                tracing::info!("received SIGHUP; reopened the log file");
            }
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
/// etcd's compactor: periodic mode keeps `retention` of history (checking every retention period,
/// at most hourly); revision mode keeps the last `retention` revisions (checking every
/// `--auto-compaction-check-interval`, etcd's fixed 5 minutes by default).
/// Only the leader compacts; the compaction itself goes through raft.
pub(super) async fn auto_compact(
    ctx: ServerCtx,
    config: Arc<Config>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (period, keep) = match config.auto_compaction {
        AutoCompaction::Periodic(retention) => (
            retention
                .min(Duration::from_secs(3600))
                .max(Duration::from_millis(100)),
            retention,
        ),
        AutoCompaction::Revision(_) => (
            config
                .auto_compaction_check_interval
                .max(Duration::from_millis(100)),
            Duration::ZERO,
        ),
        AutoCompaction::Disabled => return,
    };
    // Periodic mode samples the revision every tenth of the period so it knows which revision
    // was current `retention` ago.
    let sample_every = (period / 10).max(Duration::from_millis(50));
    let mut samples: std::collections::VecDeque<(Instant, i64)> = Default::default();
    let mut interval = tokio::time::interval(sample_every);
    let mut last_run = Instant::now();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        samples.push_back((now, ctx.mvcc.current_revision()));
        if now.duration_since(last_run) < period {
            continue;
        }
        last_run = now;
        if !ctx.node.status().is_leader {
            continue;
        }
        let target = match config.auto_compaction {
            AutoCompaction::Revision(keep_revs) => ctx.mvcc.current_revision() - keep_revs as i64,
            _ => {
                while samples.len() > 1 && now.duration_since(samples[1].0) >= keep {
                    samples.pop_front();
                }
                match samples.front() {
                    Some((at, rev)) if now.duration_since(*at) >= keep => *rev,
                    _ => continue,
                }
            }
        };
        if target <= ctx.mvcc.compact_revision() || target <= 0 {
            continue;
        }
        match crate::api::kv::compact(&ctx, target, false, crate::node::Origin::Member).await {
            Ok(_) => tracing::info!(revision = target, "auto compaction completed"),
            Err(e) => tracing::warn!(revision = target, error = %e, "auto compaction failed"),
        }
    }
}
