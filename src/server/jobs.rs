//! Background jobs: attribute publishing, the data dir's free-space
//! guard and the auto-compactor. Each runs
//! until its task set (`jobs`) stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::api::ServerCtx;
use crate::config::{AutoCompaction, Config, etcd_url_string};
use crate::proto::oxetcdpb::MemberAttributes;

/// The shortest a publish attempt waits for its proposal to apply.
const PUBLISH_ATTEMPT_MIN: Duration = Duration::from_millis(500);

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
            // The attributes apply the same however often they are proposed, so an attempt
            // whose proposal was lost on its way to the leader (a link to it not up yet) is
            // retried after an election timeout rather than the whole request timeout: the
            // member serves clients only once this is applied.
            let attempt = config.election_timeout().max(PUBLISH_ATTEMPT_MIN);
            match ctx
                .node
                .propose_within(attrs.clone(), crate::node::Origin::Member, attempt)
                .await
            {
                Ok(_) => {
                    tracing::info!(client_urls = ?attrs.client_urls, "published local member to cluster through raft");
                    published.send_replace(true);
                    return;
                }
                Err(e) => {
                    tracing::info!(error = %e, "publishing member attributes failed; retrying")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.heartbeat_interval()) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
/// How often the `disk-space` job looks at the data dir's filesystem.
const DISK_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Samples what RocksDB will still write (for the write admission in `check_quota`) and raises
/// NOSPACE when the data dir's filesystem is within its reserve even though this member admits no
/// writes (a follower's disk filling with the leader's entries), so the cluster stops taking
/// writes before this member's raft log write fails.
pub(super) async fn guard_disk_space(ctx: ServerCtx, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(DISK_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let engine = ctx.engine.clone();
        let Ok(unflushed_bytes) =
            tokio::task::spawn_blocking(move || engine.unflushed_bytes()).await
        else {
            continue;
        };
        ctx.quota.set_unflushed_bytes(unflushed_bytes);
        if ctx.alarms.nospace_active() {
            continue;
        }
        if let Some(shortage) = ctx.quota.disk_shortage(0)
            && let Some(raising) = ctx.quota.start_raising()
        {
            tracing::warn!(
                free_bytes = shortage.free_bytes,
                unflushed_bytes = shortage.unflushed_bytes,
                reserve_bytes = shortage.reserve_bytes,
                "data dir filesystem within its reserve; raising NOSPACE"
            );
            ctx.propose_nospace(raising).await;
        }
    }
}

/// etcd's compactor: periodic mode keeps `retention` of history (checking every retention period,
/// at most hourly); revision mode keeps the last `retention` revisions (checking every
/// `--auto-compaction-check-interval`, etcd's fixed 5 minutes by default).
/// Only the leader compacts; the compaction itself goes through raft. Periodic mode samples the
/// revision on every member (a follower that becomes leader needs the window it saw), holding
/// only the [`RevisionSamples`] window; revision mode keeps no state.
pub(super) async fn auto_compact(
    ctx: ServerCtx,
    config: Arc<Config>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (period, mut samples) = match config.auto_compaction {
        AutoCompaction::Periodic(retention) => {
            let period = retention
                .min(Duration::from_secs(3600))
                .max(Duration::from_millis(100));
            (period, Some(RevisionSamples::new(retention, period)))
        }
        AutoCompaction::Revision(_) => (
            config
                .auto_compaction_check_interval
                .max(Duration::from_millis(100)),
            None,
        ),
        AutoCompaction::Disabled => return,
    };
    let tick_every = match &samples {
        Some(samples) => samples.sample_every,
        None => period,
    };
    let mut interval = tokio::time::interval(tick_every);
    // A stalled runtime must not catch up with a burst of samples.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_run = Instant::now();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        if let Some(samples) = &mut samples {
            samples.record(now, ctx.mvcc.current_revision());
        }
        if now.duration_since(last_run) < period {
            continue;
        }
        last_run = now;
        if !ctx.node.status().is_leader {
            continue;
        }
        let target = match (config.auto_compaction, &samples) {
            (AutoCompaction::Revision(keep_revs), _) => {
                ctx.mvcc.current_revision() - keep_revs as i64
            }
            (_, Some(samples)) => match samples.target(now) {
                Some(rev) => rev,
                None => continue,
            },
            (_, None) => continue,
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

/// Periodic auto compaction's memory: the revision sampled every tenth of the check period,
/// oldest first, kept only as far back as the newest sample at least `retention` old (the
/// compaction target). Holds at most [`RevisionSamples::max_len`] samples whatever the uptime.
struct RevisionSamples {
    retention: Duration,
    sample_every: Duration,
    samples: std::collections::VecDeque<(Instant, i64)>,
}

impl RevisionSamples {
    fn new(retention: Duration, period: Duration) -> RevisionSamples {
        RevisionSamples {
            retention,
            sample_every: (period / 10).max(Duration::from_millis(50)),
            samples: Default::default(),
        }
    }

    /// The window's size: the samples younger than `retention`, the one just older, and one
    /// for rounding.
    fn max_len(&self) -> usize {
        let per_window = self.retention.as_nanos() / self.sample_every.as_nanos();
        usize::try_from(per_window)
            .unwrap_or(usize::MAX)
            .saturating_add(2)
    }

    /// Records `rev` as current at `now` and forgets what no later target can be.
    fn record(&mut self, now: Instant, rev: i64) {
        self.samples.push_back((now, rev));
        while self.samples.len() > 1 && now.duration_since(self.samples[1].0) >= self.retention {
            self.samples.pop_front();
        }
        // Samples closer together than planned (a clock that jumped): thin the history after
        // the oldest, which only makes later targets older, never newer.
        while self.samples.len() > self.max_len() {
            self.samples.remove(1);
        }
    }

    /// The revision that was current `retention` ago, if the samples reach back that far.
    fn target(&self, now: Instant) -> Option<i64> {
        match self.samples.front() {
            Some((at, rev)) if now.duration_since(*at) >= self.retention => Some(*rev),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over many retention periods the samples stay within the window, and the target is the
    /// revision sampled a retention ago.
    #[test]
    fn revision_samples_hold_only_the_retention_window() {
        let retention = Duration::from_secs(600);
        let mut samples = RevisionSamples::new(retention, retention);
        assert_eq!(samples.sample_every, Duration::from_secs(60));
        let start = Instant::now();
        let mut longest = 0;
        for minute in 0..1000 {
            let now = start + Duration::from_secs(60 * minute);
            samples.record(now, 100 + minute as i64);
            longest = longest.max(samples.samples.len());
            let expected = (minute >= 10).then(|| 100 + minute as i64 - 10);
            assert_eq!(samples.target(now), expected, "at minute {minute}");
        }
        assert!(longest <= samples.max_len(), "{longest} samples held");
        assert_eq!(samples.max_len(), 12);
    }

    /// Samples arriving faster than planned are thinned, never grow past the bound, and never
    /// give a target newer than the retention allows.
    #[test]
    fn revision_samples_stay_bounded_when_samples_bunch_up() {
        let retention = Duration::from_secs(10);
        let mut samples = RevisionSamples::new(retention, retention);
        let start = Instant::now();
        for i in 0..10_000u64 {
            let now = start + Duration::from_millis(i);
            samples.record(now, i as i64);
            assert!(samples.samples.len() <= samples.max_len());
        }
        let now = start + Duration::from_millis(10_000);
        samples.record(now, 10_000);
        assert_eq!(
            samples.target(now),
            Some(0),
            "the oldest sample is kept as the target"
        );
        let later = start + Duration::from_secs(20);
        samples.record(later, 20_000);
        let target = samples.target(later).expect("history reaches back 10 s");
        assert!(
            target <= 10_000,
            "target {target} is at least the retention old"
        );
    }
}
