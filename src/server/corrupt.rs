//! Corruption checks, etcd's way: members compare their KV hashes (`Peer/HashKV`, what
//! Maintenance/HashKV answers) at the same revision.
//!
//! - [`initial_check`] (`--experimental-initial-corrupt-check`): a restarting member, before its
//!   raft node starts or it serves anyone, hashes its store at its current revision and asks
//!   every peer for its hash at that revision; a peer with the same compaction revision and
//!   another hash means this member's data is not the cluster's, and it refuses to start.
//! - [`monitor`] (`--corrupt-check-time`): every interval the leader hashes its store, asks its
//!   followers at the same revision, and on a mismatch proposes the CORRUPT alarm for the member
//!   at fault, which stops writes on every member (`etcdserver: corrupt cluster`) until an
//!   operator disarms it.
//!
//! A peer that cannot answer (down, behind, or already compacted past the revision) is logged
//! and skipped, as etcd does.

use std::time::Duration;

use tokio::sync::watch;

use super::ServerError;
use crate::api::ServerCtx;
use crate::mvcc::MvccStore;
use crate::node::Origin;
use crate::peer::PeerDialer;
use crate::proto::etcdserverpb::{AlarmRequest, alarm_request::AlarmAction};
use crate::proto::oxetcdpb::peer_client::PeerClient;
use crate::proto::oxetcdpb::{PeerHashKvRequest, PeerHashKvResponse};

/// One peer's answer: its hash, or why there is none.
struct PeerHash {
    id: u64,
    answer: Result<PeerHashKvResponse, String>,
}

/// Asks each of `peers` (`(member ID, peer URLs)`) for its hash at `revision`, all at once,
/// each bounded by `timeout`; a peer's URLs are tried in order until one answers.
async fn peer_hashes(
    dialer: &PeerDialer,
    cluster_id: u64,
    peers: &[(u64, Vec<String>)],
    revision: i64,
    timeout: Duration,
) -> Vec<PeerHash> {
    let asks = peers.iter().map(|(id, urls)| async move {
        let mut last_error = format!("member {id:x} has no peer URLs");
        for url in urls {
            let ask = async {
                let channel = dialer.connect(url).await.map_err(|e| e.to_string())?;
                PeerClient::new(channel)
                    .hash_kv(PeerHashKvRequest {
                        cluster_id,
                        revision,
                    })
                    .await
                    .map(|response| response.into_inner())
                    .map_err(|status| status.message().to_owned())
            };
            match tokio::time::timeout(timeout, ask).await {
                Ok(Ok(answer)) => {
                    return PeerHash {
                        id: *id,
                        answer: Ok(answer),
                    };
                }
                Ok(Err(e)) => last_error = format!("{url}: {e}"),
                Err(_) => last_error = format!("{url}: no answer within {timeout:?}"),
            }
        }
        PeerHash {
            id: *id,
            answer: Err(last_error),
        }
    });
    futures::future::join_all(asks).await
}

/// Compares this member's hash at its current revision with its peers' before it starts; an
/// error when a peer with the same compaction revision has another hash.
pub(super) async fn initial_check(
    mvcc: &std::sync::Arc<MvccStore>,
    member_id: u64,
    cluster_id: u64,
    peers: &[(u64, Vec<String>)],
    dialer: &PeerDialer,
    timeout: Duration,
) -> Result<(), ServerError> {
    tracing::info!(
        local_member_id = %format!("{member_id:x}"),
        timeout = ?timeout,
        "starting initial corruption check"
    );
    let store = mvcc.clone();
    let own = tokio::task::spawn_blocking(move || store.hash_kv(0))
        .await
        .map_err(|e| ServerError::Bootstrap(format!("the hash task failed: {e}")))??;
    let mut mismatches = 0usize;
    for peer in peer_hashes(dialer, cluster_id, peers, own.current_rev, timeout).await {
        let remote_peer_id = format!("{:x}", peer.id);
        match peer.answer {
            Ok(theirs) if theirs.hash != own.hash => {
                if theirs.compact_revision == own.compact_rev {
                    tracing::warn!(
                        local_member_revision = own.current_rev,
                        local_member_compact_revision = own.compact_rev,
                        local_member_hash = own.hash,
                        remote_peer_id,
                        remote_peer_revision = theirs.revision,
                        remote_peer_compact_revision = theirs.compact_revision,
                        remote_peer_hash = theirs.hash,
                        "found different hash values from remote peer"
                    );
                    mismatches += 1;
                } else {
                    tracing::warn!(
                        local_member_compact_revision = own.compact_rev,
                        remote_peer_id,
                        remote_peer_compact_revision = theirs.compact_revision,
                        "found different compact revision values from remote peer"
                    );
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(
                remote_peer_id,
                error = %error,
                "cannot fetch hash from remote peer"
            ),
        }
    }
    if mismatches > 0 {
        return Err(ServerError::Bootstrap(format!(
            "{member_id:x} found data inconsistency with peers"
        )));
    }
    tracing::info!(
        local_member_id = %format!("{member_id:x}"),
        "initial corruption checking passed; no corruption"
    );
    Ok(())
}

/// The leader's periodic check, every `interval` until `shutdown` turns true.
pub(super) async fn monitor(
    ctx: ServerCtx,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    tracing::info!(interval = ?interval, "enabled corruption checking");
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if !ctx.node.status().is_leader {
            continue;
        }
        tokio::select! {
            result = check_peers(&ctx) => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "failed to check hash KV");
                }
            }
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// One round of etcd's leader-side check (`checkHashKV`): the leader's hash at its revision,
/// the followers' at that revision, then (after a read barrier) the leader's again; the first
/// member found at fault gets the CORRUPT alarm.
async fn check_peers(ctx: &ServerCtx) -> Result<(), String> {
    let config = ctx.node.config();
    let (member_id, cluster_id) = (config.member_id, config.cluster_id);
    let own = crate::api::peer::hash_kv(ctx, 0)
        .await
        .map_err(|e| e.to_string())?;
    let peers: Vec<(u64, Vec<String>)> = ctx
        .membership
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .members
        .iter()
        .filter(|m| m.id != member_id)
        .map(|m| (m.id, m.peer_ur_ls.clone()))
        .collect();
    let answers = peer_hashes(
        &ctx.config.peer_dialer,
        cluster_id,
        &peers,
        own.revision,
        ctx.node.config().request_timeout,
    )
    .await;
    ctx.node.read_barrier().await.map_err(|e| e.to_string())?;
    let again = crate::api::peer::hash_kv(ctx, 0)
        .await
        .map_err(|e| e.to_string())?;

    let mut at_fault: Option<u64> = None;
    if again.hash != own.hash
        && again.revision == own.revision
        && again.compact_revision == own.compact_revision
    {
        tracing::warn!(
            leader_expected_hash = own.hash,
            leader_hash = again.hash,
            revision = own.revision,
            compact_revision = own.compact_revision,
            "found hash mismatch"
        );
        at_fault.get_or_insert(member_id);
    }
    let mut checked = 0usize;
    for peer in answers {
        let follower_id = format!("{:x}", peer.id);
        let theirs = match peer.answer {
            Ok(theirs) => theirs,
            Err(error) => {
                tracing::warn!(follower_id, error = %error, "failed hash kv request");
                continue;
            }
        };
        checked += 1;
        if theirs.revision > again.revision {
            tracing::warn!(
                leader_revision = again.revision,
                follower_revision = theirs.revision,
                follower_id,
                "revision from follower must be less than or equal to leader's"
            );
            at_fault.get_or_insert(peer.id);
        }
        if theirs.compact_revision > again.compact_revision {
            tracing::warn!(
                leader_compact_revision = again.compact_revision,
                follower_compact_revision = theirs.compact_revision,
                follower_id,
                "compact revision from follower must be less than or equal to leader's"
            );
            at_fault.get_or_insert(peer.id);
        }
        if theirs.compact_revision == own.compact_revision && theirs.hash != own.hash {
            tracing::warn!(
                leader_revision = own.revision,
                leader_compact_revision = own.compact_revision,
                leader_hash = own.hash,
                follower_revision = theirs.revision,
                follower_compact_revision = theirs.compact_revision,
                follower_hash = theirs.hash,
                follower_id,
                "same compact revision then hashes must match"
            );
            at_fault.get_or_insert(peer.id);
        }
    }
    tracing::info!(
        number_of_peers_checked = checked,
        "finished peer corruption check"
    );
    if let Some(id) = at_fault {
        let alarm = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: id,
            alarm: crate::alarm::ALARM_CORRUPT,
        };
        ctx.node
            .propose(alarm, Origin::Member)
            .await
            .map_err(|e| format!("raising the CORRUPT alarm for member {id:x}: {e}"))?;
        tracing::error!(
            member_id = %format!("{id:x}"),
            "raised the CORRUPT alarm: this member's data differs from the leader's"
        );
    }
    Ok(())
}
