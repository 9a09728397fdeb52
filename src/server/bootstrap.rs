//! Start-up: the private data directory, this member's identity (stored, bootstrapped from
//! `--initial-cluster`, or fetched from an existing cluster) and raft's log made consistent with
//! the applied state.

use crate::config::{ClusterState, Config, etcd_url_string};
use crate::membership::Membership;
use crate::peer::PeerDialer;
use crate::raft::RaftLogStore;
use crate::storage::{Batch, Engine, StorageError};

use super::ServerError;

/// Installs the snapshot a member received from its leader but stopped before installing: the
/// raft log already starts after it (the raft thread does not wait for installs), so the applied
/// state is behind the log's start. The file stays in the snapshot directory until an install
/// of it or of a newer one completes.
pub fn install_pending_snapshot(
    engine: &Engine,
    data_dir: &std::path::Path,
) -> Result<(), ServerError> {
    let (index, term) = crate::raft::storage::read_truncated(engine)?;
    let applied = crate::consistent_index::read_index(engine)?;
    // A new cluster's log starts after the bootstrap position, index 1 (`RaftLogStore::open`):
    // it stands for the initial configuration, not for a file, and there is nothing to install
    // for a member that stopped before applying (or durably applying) anything.
    if applied >= index || index <= 1 {
        return Ok(());
    }
    let dir = data_dir.join(crate::raft::snapshots::SNAP_DIR);
    let file = crate::raft::snapshots::snapshot_path(&dir, term, index);
    tracing::warn!(
        file = %file.display(),
        applied,
        index,
        "installing the snapshot received before the last stop"
    );
    crate::apply::install::install_at(engine, &file, index, term).map_err(|e| {
        ServerError::Bootstrap(format!(
            "installing the received snapshot {}: {e}",
            file.display()
        ))
    })?;
    crate::raft::snapshots::remove_files_before(&dir, index);
    Ok(())
}

/// Creates the data directory readable by this user only (etcd's 0700), and warns when an
/// existing one is more open than that.
pub(super) fn create_private_dir(dir: &std::path::Path) -> Result<(), ServerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |source| StorageError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let mode = std::fs::metadata(dir).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %dir.display(),
            mode = %format!("{mode:o}"),
            "data directory is accessible by other users; 700 is recommended"
        );
    }
    Ok(())
}
/// The peers of `membership`: every other member with its peer URLs.
pub(super) fn peer_list(membership: &Membership) -> Vec<(u64, Vec<String>)> {
    membership
        .members
        .iter()
        .filter(|m| m.id != membership.member_id)
        .map(|m| (m.id, m.peer_ur_ls.clone()))
        .collect()
}
/// After a crash the raft log may lag the state machine: a snapshot install finished but the
/// raft log was not yet replaced, or a configuration change was applied but raft's copy of the
/// configuration not yet written. The state machine is the authority at its applied index.
pub fn reconcile_raft_with_state(
    engine: &Engine,
    store: &mut RaftLogStore,
    membership: &Membership,
    applied_index: u64,
) -> Result<(), ServerError> {
    if applied_index == 0 {
        return Ok(());
    }
    let cs = crate::membership::conf_state_from(&membership.members);
    let mut batch = Batch::new();
    if applied_index > store.last() || applied_index > store.hard_state().commit {
        let (_, term) = crate::consistent_index::read_position(&engine.view())
            .map_err(|e| ServerError::Bootstrap(e.to_string()))?;
        tracing::warn!(
            applied_index,
            raft_last_index = store.last(),
            "the raft log is behind the installed snapshot; moving it up"
        );
        store.apply_snapshot(&mut batch, applied_index, term, cs);
    } else if store.conf_state().voters != cs.voters || store.conf_state().learners != cs.learners {
        tracing::info!(voters = ?cs.voters, learners = ?cs.learners, "raft configuration taken from the applied member list");
        store.set_conf_state(&mut batch, cs);
    }
    if !batch.is_empty() {
        engine.write(batch, true)?;
    }
    Ok(())
}
/// The stored identity, or a new one: from `--initial-cluster` for a new cluster, or asked of
/// the existing members for `--initial-cluster-state existing`. Returns whether this member is
/// joining an existing cluster for the first time.
pub(super) async fn load_or_bootstrap_membership(
    config: &Config,
    engine: &Engine,
    dialer: &PeerDialer,
) -> Result<(Membership, bool), ServerError> {
    if let Some(membership) = Membership::load(engine)? {
        return Ok((membership, false));
    }
    let initial: Vec<(String, Vec<String>)> = config
        .initial_cluster
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                m.peer_urls.iter().map(etcd_url_string).collect(),
            )
        })
        .collect();
    if config.initial_cluster_state == ClusterState::Existing {
        let membership = join_existing(config, &initial, dialer).await?;
        let mut batch = Batch::new();
        membership.save(engine, &mut batch);
        engine.write(batch, true)?;
        return Ok((membership, true));
    }
    config
        .verify_bootstrap()
        .map_err(|e| ServerError::Bootstrap(e.to_string()))?;
    let membership = Membership::bootstrap(&config.name, &initial, &config.initial_cluster_token)
        .ok_or_else(|| {
        ServerError::Bootstrap(format!(
            "--initial-cluster {:?} has no member named {:?}",
            config.initial_cluster_string(),
            config.name
        ))
    })?;
    let mut batch = Batch::new();
    membership.save(engine, &mut batch);
    engine.write(batch, true)?;
    Ok((membership, false))
}
/// Asks the other members named in `--initial-cluster` for the member list and finds this
/// member in it by its advertised peer URLs (it must have been added with `member add`).
pub(super) async fn join_existing(
    config: &Config,
    initial: &[(String, Vec<String>)],
    dialer: &PeerDialer,
) -> Result<Membership, ServerError> {
    let my_urls: Vec<String> = config
        .initial_advertise_peer_urls
        .iter()
        .map(etcd_url_string)
        .collect();
    let mut errors = Vec::new();
    for (name, urls) in initial {
        if *name == config.name {
            continue;
        }
        for url in urls {
            match crate::peer::transport::fetch_members(dialer, url).await {
                Ok(answer) => {
                    let me = answer
                        .members
                        .iter()
                        .find(|m| m.peer_ur_ls.iter().any(|u| my_urls.contains(u)));
                    let Some(me) = me else {
                        return Err(ServerError::Bootstrap(format!(
                            "member {} of the cluster does not list this member's peer URLs {my_urls:?}; add it with `etcdctl member add` first",
                            url
                        )));
                    };
                    tracing::info!(
                        cluster_id = %format!("{:x}", answer.cluster_id),
                        member_id = %format!("{:x}", me.id),
                        from = %url,
                        "joining an existing cluster"
                    );
                    return Ok(Membership {
                        cluster_id: answer.cluster_id,
                        member_id: me.id,
                        members: answer.members.clone(),
                    });
                }
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
    }
    Err(ServerError::Bootstrap(format!(
        "cannot fetch the cluster's members from --initial-cluster peers: {}",
        errors.join("; ")
    )))
}
/// etcd's minimum lease TTL: 1.5 election timeouts, rounded up to whole seconds.
pub(super) fn min_lease_ttl_secs(config: &Config) -> i64 {
    let ms = config.election_timeout().as_millis() as i64 * 3 / 2;
    (ms + 999) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member of a new cluster that stopped before anything was durably applied has its log
    /// starting after the bootstrap position and no applied index: nothing to install there.
    #[test]
    fn a_bootstrapped_member_that_applied_nothing_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), false).unwrap();
        let store = RaftLogStore::open(engine.clone(), &[1, 2, 3]).unwrap();
        assert_eq!(store.first(), 2);
        drop(store);
        install_pending_snapshot(&engine, dir.path()).unwrap();
        assert_eq!(crate::consistent_index::read_index(&engine).unwrap(), 0);
    }
}
