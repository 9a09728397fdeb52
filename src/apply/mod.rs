//! Applies committed raft entries, in log order, to the MVCC store, the lessor and the alarms,
//! then answers the member's waiting proposers and feeds the watch hub.
//!
//! Each entry becomes one RocksDB write (not synced: the raft log is, and entries after the
//! persisted `consistent_index` are re-applied on restart), written together with the new
//! consistent index so the state machine and its position can never disagree. A raft snapshot
//! from the leader replaces the state machine through [`install`].

mod compactor;
pub mod install;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use prost::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType};
use tokio::sync::oneshot;

use crate::alarm::{ALARM_NOSPACE, Alarms};
use crate::auth::{AuthError, AuthStore, requests};
use crate::consistent_index;
use crate::lease::{LeaseError, Lessor};
use crate::membership::Membership;
use crate::metrics::MvccOps;
use crate::mvcc::{MvccError, MvccStore};
use crate::proto::etcdserverpb::Member;
use crate::proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, CompactionResponse, DeleteRangeResponse,
    LeaseGrantResponse, LeaseRevokeResponse, PutResponse, ResponseHeader, TxnResponse,
    alarm_request::AlarmAction,
};
use crate::proto::mvccpb::{Event, event::EventType};
use crate::proto::oxetcdpb::auth_change::Change as AuthChange;
use crate::proto::oxetcdpb::{
    AuthChange as AuthChangeRequest, Caller, InternalRequest, MemberChange,
    internal_request::Request,
};
use crate::storage::{Batch, Engine, StorageError};
use crate::txn::{self, TxnError};
use crate::watch::WatchHub;

/// What applying one request produced.
#[derive(Debug)]
pub enum Response {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    /// `physical_done` fires when the compacted revisions are gone from disk.
    Compaction {
        response: CompactionResponse,
        physical_done: oneshot::Receiver<()>,
    },
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    Alarm(AlarmResponse),
    LeaseCheckpoint,
    /// A membership change took effect; the member list after it.
    Members(Vec<Member>),
    /// An auth store change took effect.
    AuthChanged,
    /// Authenticate: the token every member assigned.
    Token(String),
}

/// Why a committed request had no effect.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The proposal never entered the log (no leader to take it).
    #[error("proposal dropped")]
    Dropped,
    #[error(transparent)]
    Txn(#[from] TxnError),
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("database space exceeded")]
    NoSpace,
    #[error("corrupt cluster")]
    Corrupt,
    #[error("member ID already exist")]
    MemberExists,
    #[error("member not found")]
    MemberNotFound,
    #[error("can only promote a learner member")]
    MemberNotLearner,
    #[error(transparent)]
    Auth(#[from] AuthError),
}

pub type Reply = Result<Response, ApplyError>;

/// Proposers waiting for their request to be applied on this member, by request ID.
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Reply>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, id: u64) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        rx
    }

    pub fn cancel(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Proposers still waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn trigger(&self, id: u64, reply: Reply) {
        if let Some(tx) = self.lock().remove(&id) {
            let _ = tx.send(reply);
        }
    }
}

/// The state machine side of the member.
pub struct Applier {
    engine: Arc<Engine>,
    mvcc: Arc<MvccStore>,
    lessor: Arc<Mutex<Lessor>>,
    watch: Arc<WatchHub>,
    alarms: Arc<Alarms>,
    auth: Arc<AuthStore>,
    waiters: Arc<Waiters>,
    applied_index: u64,
    membership: Option<MembershipSink>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Request spans of traced entries about to be applied, by request ID.
    traces: HashMap<u64, tracing::Span>,
    /// Configuration changes applied since raft last took them (raft must apply them too).
    conf_changes: Vec<ConfChange>,
    /// Deletes compacted revisions from disk, one compaction at a time in apply order, on a
    /// thread of a set of its own unless the server hands one in.
    compactor: compactor::Compactor,
}

/// Where membership changes go: the shared member list, and a callback told about every new
/// list (peer transport updates, and stopping a member that was removed).
pub struct MembershipSink {
    pub membership: Arc<RwLock<Membership>>,
    pub on_change: Box<dyn Fn(&Membership) + Send>,
}

impl Applier {
    pub fn new(
        engine: Arc<Engine>,
        mvcc: Arc<MvccStore>,
        lessor: Arc<Mutex<Lessor>>,
        watch: Arc<WatchHub>,
        alarms: Arc<Alarms>,
    ) -> Result<Applier, StorageError> {
        let applied_index = consistent_index::read_index(&engine)?;
        Ok(Applier {
            engine,
            mvcc,
            lessor,
            watch,
            alarms,
            auth: Arc::new(AuthStore::default()),
            waiters: Arc::new(Waiters::default()),
            applied_index,
            membership: None,
            metrics: None,
            traces: HashMap::new(),
            conf_changes: Vec::new(),
            compactor: compactor::Compactor::new(crate::tasks::TaskSet::new("apply")),
        })
    }

    /// Runs the compactor thread in `threads`, which the server joins at shutdown.
    pub fn with_threads(mut self, threads: crate::tasks::TaskSet) -> Applier {
        self.compactor = compactor::Compactor::new(threads);
        self
    }

    /// Records each state-machine write in `metrics` (etcd's backend commit duration).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Applier {
        self.metrics = Some(metrics);
        self
    }

    /// Applies auth changes to `auth` (without one they go to a store of the applier's own).
    pub fn with_auth(mut self, auth: Arc<AuthStore>) -> Applier {
        self.auth = auth;
        self
    }

    /// Applies membership changes to `sink` (without one they only reach raft).
    pub fn with_membership(mut self, sink: MembershipSink) -> Applier {
        self.membership = Some(sink);
        self
    }

    /// The request spans of entries in the next batch whose requests are traced.
    pub fn trace(&mut self, traces: Vec<(u64, tracing::Span)>) {
        self.traces.extend(traces);
    }

    /// Configuration changes applied since the last call, for raft to apply in the same order.
    pub fn take_conf_changes(&mut self) -> Vec<ConfChange> {
        std::mem::take(&mut self.conf_changes)
    }

    /// Replaces the state machine with the raft snapshot in `file` taken at (`index`, `term`)
    /// and rebuilds everything held in memory from it; `progress` is called as the file's
    /// batches are written.
    pub fn install_snapshot(
        &mut self,
        file: &Path,
        index: u64,
        term: u64,
        progress: &mut dyn FnMut(),
    ) {
        let started = std::time::Instant::now();
        let expected = crate::snapshot::format::SnapshotPosition { index, term };
        if let Err(e) = install::install_reporting(&self.engine, file, expected, progress) {
            crate::fatal("installing a raft snapshot", &e);
        }
        if let Err(e) = self.mvcc.reload() {
            crate::fatal("loading the installed snapshot", &e);
        }
        if let Err(e) = self.alarms.reload(&self.engine) {
            crate::fatal("loading the installed snapshot's alarms", &e);
        }
        if let Err(e) = self.auth.reload(&self.engine) {
            crate::fatal("loading the installed snapshot's users and roles", &e);
        }
        let leases = self.mvcc.take_restored_leases();
        {
            let mut lessor = self.lessor();
            let min_ttl = lessor.min_ttl_secs();
            match Lessor::open(
                self.engine.clone(),
                min_ttl,
                leases,
                std::time::Instant::now(),
            ) {
                Ok(fresh) => *lessor = fresh,
                Err(e) => crate::fatal("loading the installed snapshot's leases", &e),
            }
        }
        if let Some(sink) = &self.membership {
            let loaded = match crate::membership::Membership::load(&self.engine) {
                Ok(Some(m)) => m,
                Ok(None) => crate::fatal(
                    "loading the installed snapshot's members",
                    &"the snapshot has no member list",
                ),
                Err(e) => crate::fatal("loading the installed snapshot's members", &e),
            };
            *sink.membership.write().unwrap_or_else(|p| p.into_inner()) = loaded.clone();
            (sink.on_change)(&loaded);
        }
        self.watch
            .restored(self.mvcc.current_revision(), self.mvcc.compact_revision());
        self.applied_index = index;
        tracing::info!(
            index,
            term,
            revision = self.mvcc.current_revision(),
            took = ?started.elapsed(),
            "installed a snapshot from the leader"
        );
    }

    /// Applies a raft configuration change: the member list changes in `batch`; the change is
    /// queued for raft unless it is invalid against the current list (then raft never sees it,
    /// as etcd does).
    fn apply_conf_change(&mut self, entry: &Entry, batch: &mut Batch) -> Option<(u64, Reply)> {
        let cc: ConfChange = match crate::raft::codec::decode(&entry.data) {
            Ok(cc) => cc,
            Err(e) => crate::fatal(
                "decoding a committed configuration change",
                &format!("entry {}: {e}", entry.index),
            ),
        };
        let change = MemberChange::decode(cc.get_context()).unwrap_or_default();
        let Some(sink) = &self.membership else {
            self.conf_changes.push(cc);
            return None;
        };
        let mut next = sink
            .membership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let id = cc.node_id;
        let existing = next.members.iter().position(|m| m.id == id);
        let outcome = match (cc.get_change_type(), existing) {
            (ConfChangeType::AddNode, Some(i)) if next.members[i].is_learner => {
                next.members[i].is_learner = false;
                Ok(())
            }
            (ConfChangeType::AddNode, Some(_)) => Err(ApplyError::MemberNotLearner),
            (ConfChangeType::AddLearnerNode, Some(_)) => Err(ApplyError::MemberExists),
            (ConfChangeType::AddNode | ConfChangeType::AddLearnerNode, None) => {
                let mut member = change.member.clone().unwrap_or_default();
                member.id = id;
                member.is_learner = cc.get_change_type() == ConfChangeType::AddLearnerNode;
                next.members.push(member);
                Ok(())
            }
            (ConfChangeType::RemoveNode, Some(i)) => {
                next.members.remove(i);
                Ok(())
            }
            (ConfChangeType::RemoveNode, None) => Err(ApplyError::MemberNotFound),
        };
        let reply = match outcome {
            Ok(()) => {
                next.save(&self.engine, batch);
                tracing::info!(
                    member_id = %format!("{id:x}"),
                    change = ?cc.get_change_type(),
                    members = next.members.len(),
                    "applied a membership change"
                );
                self.conf_changes.push(cc);
                let members = next.members.clone();
                *sink.membership.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
                (sink.on_change)(&next);
                Ok(Response::Members(members))
            }
            Err(e) => Err(e),
        };
        (change.request_id != 0).then_some((change.request_id, reply))
    }

    /// Applies a member's published attributes or new peer URLs.
    fn apply_member_record(&mut self, batch: &mut Batch, update: MemberUpdate) -> Reply {
        let Some(sink) = &self.membership else {
            return Err(ApplyError::MemberNotFound);
        };
        let mut next = sink
            .membership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (id, apply): (u64, MemberEdit) = match update {
            MemberUpdate::Attributes(a) => (
                a.member_id,
                Box::new(move |m: &mut Member| {
                    m.name = a.name;
                    m.client_ur_ls = a.client_urls;
                }),
            ),
            MemberUpdate::PeerUrls(c) => {
                let member = c.member.unwrap_or_default();
                (
                    member.id,
                    Box::new(move |m: &mut Member| m.peer_ur_ls = member.peer_ur_ls),
                )
            }
        };
        let Some(member) = next.members.iter_mut().find(|m| m.id == id) else {
            return Err(ApplyError::MemberNotFound);
        };
        apply(member);
        next.save(&self.engine, batch);
        let members = next.members.clone();
        *sink.membership.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
        (sink.on_change)(&next);
        Ok(Response::Members(members))
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn waiters(&self) -> Arc<Waiters> {
        self.waiters.clone()
    }

    fn lessor(&self) -> std::sync::MutexGuard<'_, Lessor> {
        self.lessor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `entries` in order and returns the new applied index.
    pub fn apply_entries(&mut self, entries: Vec<Entry>) -> u64 {
        for entry in entries {
            if entry.index <= self.applied_index {
                continue;
            }
            let entry_started = std::time::Instant::now();
            let mut batch = Batch::new();
            let mut span: Option<(tracing::Span, tracing::Span)> = None;
            let outcome = match entry.get_entry_type() {
                EntryType::EntryNormal if !entry.data.is_empty() => {
                    match InternalRequest::decode(&entry.data[..]) {
                        Ok(req) => {
                            span = self.traces.remove(&req.id).map(|parent| {
                                let s = tracing::info_span!(target: crate::telemetry::TRACE_TARGET, parent: &parent, "apply", raft_index = entry.index, revision = tracing::field::Empty);
                                (parent, s)
                            });
                            let _entered = span.as_ref().map(|(_, s)| s.enter());
                            let caller = req.caller.as_ref();
                            let refused = self.refuse_unpermitted(req.request.as_ref(), caller);
                            let pending = match refused {
                                Err(e) => Pending::Done(Err(e.into())),
                                Ok(()) => self.apply_request(
                                    req.request,
                                    req.quota_bytes,
                                    entry.index,
                                    &mut batch,
                                ),
                            };
                            Some((req.id, pending))
                        }
                        Err(e) => crate::fatal(
                            "decoding a committed raft entry",
                            &format!("entry {}: {e}", entry.index),
                        ),
                    }
                }
                EntryType::EntryConfChange => self
                    .apply_conf_change(&entry, &mut batch)
                    .map(|(id, reply)| (id, Pending::Done(reply))),
                // Empty entries (a new leader's first) change nothing; joint-consensus changes
                // (V2) are never proposed.
                _ => None,
            };
            consistent_index::write(&self.engine, &mut batch, entry.index, entry.term);
            let (id, pending) = match outcome {
                Some((id, pending)) => (Some(id), Some(pending)),
                None => (None, None),
            };
            let started = std::time::Instant::now();
            failpoint!("apply_write");
            if let Err(e) = self.engine.write(batch, false) {
                crate::fatal("writing applied state", &e);
            }
            if let Some(metrics) = &self.metrics {
                metrics
                    .backend_commit_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            self.applied_index = entry.index;
            if let (Some(id), Some(pending)) = (id, pending) {
                let reply = {
                    let _entered = span.as_ref().map(|(_, s)| s.enter());
                    pending.finish(self)
                };
                if let (Some((request, apply)), Some(rev)) = (&span, revision_of(&reply)) {
                    apply.record("revision", rev);
                    request.record("revision", rev);
                }
                // The apply span ends before the proposer wakes up and replies.
                drop(span.take());
                self.waiters.trigger(id, reply);
            }
            if let Some(metrics) = &self.metrics
                && entry_started.elapsed() > SLOW_APPLY
            {
                metrics.slow_applies.inc();
            }
        }
        self.applied_index
    }

    /// Refuses a client's request its caller may not make while auth is enabled, as etcd does at
    /// apply (so a permission revoked after the request was proposed still counts). The
    /// member's own requests carry no caller and are not checked.
    fn refuse_unpermitted(
        &self,
        request: Option<&Request>,
        caller: Option<&Caller>,
    ) -> Result<(), AuthError> {
        let (Some(caller), Some(request)) = (caller, request) else {
            return Ok(());
        };
        if !self.auth.is_enabled() {
            return Ok(());
        }
        let lease_keys = |id: i64| -> Vec<Vec<u8>> {
            self.lessor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys_of(id)
        };
        let (needs, admin) = match request {
            Request::Put(r) => {
                let keys = if r.lease != 0 {
                    lease_keys(r.lease)
                } else {
                    Vec::new()
                };
                (requests::put(r, &keys), false)
            }
            Request::DeleteRange(r) => (requests::delete_range(r), false),
            Request::Txn(r) => (requests::txn(r, &lease_keys), false),
            Request::LeaseRevoke(r) => (requests::lease_revoke(&lease_keys(r.id)), false),
            // etcd 3.4 lets any authenticated user grant leases, compact and manage alarms.
            Request::LeaseGrant(_) | Request::Compaction(_) | Request::Alarm(_) => {
                (Vec::new(), false)
            }
            // Authenticate checked the password where it was proposed; enabling needs nothing
            // while auth is off (and changes nothing while it is on).
            Request::Auth(AuthChangeRequest {
                change: Some(AuthChange::IssueToken(_) | AuthChange::Enable(_)),
            }) => return Ok(()),
            Request::Auth(_)
            | Request::MemberAttributes(_)
            | Request::MemberUpdate(_)
            | Request::LeaseCheckpoint(_) => (Vec::new(), true),
        };
        self.auth
            .check(&caller.user, caller.auth_revision, &needs, admin)
    }

    /// Whether a write costing `cost_bytes` (its request's encoded length) would take the
    /// store past `quota_bytes`, the quota its proposer stamped in the entry (0: not checked).
    /// The store's [`MvccStore::used_bytes`] is the same on every member at this entry, so
    /// every member makes the same decision.
    fn over_quota(&self, quota_bytes: u64, cost_bytes: usize) -> bool {
        quota_bytes != 0 && self.mvcc.used_bytes().saturating_add(cost_bytes as u64) > quota_bytes
    }

    fn apply_request(
        &mut self,
        request: Option<Request>,
        quota_bytes: u64,
        index: u64,
        batch: &mut Batch,
    ) -> Pending {
        let Some(request) = request else {
            return Pending::Done(Err(ApplyError::Txn(TxnError::KeyNotFound)));
        };
        if self.alarms.corrupt_active() && !matches!(request, Request::Alarm(_)) {
            return Pending::Done(Err(ApplyError::Corrupt));
        }
        let nospace = self.alarms.nospace_active();
        match request {
            Request::Put(req) => {
                if nospace || self.over_quota(quota_bytes, req.encoded_len()) {
                    return Pending::Done(Err(ApplyError::NoSpace));
                }
                self.write_txn(batch, |txn, lease_exists| {
                    let response = txn::apply_put(txn, &req, lease_exists)?;
                    Ok((Response::Put(response), txn::count::put(&req)))
                })
            }
            Request::DeleteRange(req) => self.write_txn(batch, |txn, lease_exists| {
                let response = txn::apply_delete_range(txn, &req, lease_exists)?;
                Ok((
                    Response::DeleteRange(response),
                    txn::count::delete_range(&req),
                ))
            }),
            Request::Txn(req) => {
                if txn::has_writes(&req)
                    && (nospace || self.over_quota(quota_bytes, req.encoded_len()))
                {
                    return Pending::Done(Err(ApplyError::NoSpace));
                }
                self.write_txn(batch, |txn, lease_exists| {
                    let (response, ops) = txn::apply_txn(txn, &req, lease_exists)?;
                    Ok((Response::Txn(response), ops))
                })
            }
            Request::Compaction(req) => match self.mvcc.compact(req.revision, batch) {
                Ok(job) => {
                    self.record_mvcc(txn::count::compaction());
                    Pending::Compaction(job)
                }
                Err(e) => Pending::Done(Err(e.into())),
            },
            Request::LeaseGrant(req) => {
                if nospace || self.over_quota(quota_bytes, req.encoded_len()) {
                    return Pending::Done(Err(ApplyError::NoSpace));
                }
                let now = std::time::Instant::now();
                let engine = self.engine.clone();
                let granted = self.lessor().grant(&engine, batch, req.id, req.ttl, now);
                Pending::Done(granted.map_err(ApplyError::from).map(|ttl| {
                    Response::LeaseGrant(LeaseGrantResponse {
                        header: None,
                        id: req.id,
                        ttl,
                        error: String::new(),
                    })
                }))
            }
            Request::LeaseRevoke(req) => {
                let engine = self.engine.clone();
                let keys = match self.lessor().revoke(&engine, batch, req.id) {
                    Ok(keys) => keys,
                    Err(e) => return Pending::Done(Err(e.into())),
                };
                self.write_txn(batch, move |txn, _| {
                    for key in &keys {
                        txn.delete_range(key, &[]).map_err(TxnError::from)?;
                    }
                    Ok((
                        Response::LeaseRevoke(LeaseRevokeResponse { header: None }),
                        txn::count::lease_revoke(keys.len()),
                    ))
                })
            }
            Request::LeaseCheckpoint(req) => {
                let now = std::time::Instant::now();
                let engine = self.engine.clone();
                let mut lessor = self.lessor();
                for cp in req.checkpoints {
                    lessor.checkpoint(&engine, batch, cp.id, cp.remaining_ttl, now);
                }
                Pending::Done(Ok(Response::LeaseCheckpoint))
            }
            Request::Alarm(req) => {
                Pending::Done(Ok(Response::Alarm(self.apply_alarm(&req, batch))))
            }
            Request::MemberAttributes(attrs) => {
                Pending::Done(self.apply_member_record(batch, MemberUpdate::Attributes(attrs)))
            }
            Request::MemberUpdate(change) => {
                Pending::Done(self.apply_member_record(batch, MemberUpdate::PeerUrls(change)))
            }
            Request::Auth(AuthChangeRequest {
                change: Some(AuthChange::IssueToken(issue)),
            }) => {
                let token = crate::auth::tokens::token(&issue.letters, index);
                Pending::Done(
                    self.auth
                        .issue_token(&issue.user, &token, std::time::Instant::now())
                        .map(|()| Response::Token(token))
                        .map_err(ApplyError::from),
                )
            }
            Request::Auth(change) => Pending::Done(
                self.apply_auth(change.change, batch)
                    .map(|()| Response::AuthChanged)
                    .map_err(ApplyError::from),
            ),
        }
    }

    /// One auth store change, with etcd's rules (`auth::store`). A change with nothing in it
    /// (a newer member's change this one does not know) changes nothing.
    fn apply_auth(&self, change: Option<AuthChange>, batch: &mut Batch) -> Result<(), AuthError> {
        let (auth, engine) = (&self.auth, &self.engine);
        match change {
            None => Ok(()),
            Some(AuthChange::Enable(_)) => auth.enable_mut(engine, batch),
            Some(AuthChange::Disable(_)) => {
                auth.disable_mut(engine, batch);
                Ok(())
            }
            Some(AuthChange::UserAdd(r)) => {
                let no_password = r.options.is_some_and(|o| o.no_password);
                auth.user_add_mut(
                    engine,
                    batch,
                    &r.name,
                    r.hashed_password.as_bytes(),
                    no_password,
                )
            }
            Some(AuthChange::UserDelete(r)) => auth.user_delete_mut(engine, batch, &r.name),
            Some(AuthChange::UserChangePassword(r)) => {
                auth.user_change_password_mut(engine, batch, &r.name, r.hashed_password.as_bytes())
            }
            Some(AuthChange::UserGrantRole(r)) => {
                auth.user_grant_role_mut(engine, batch, &r.user, &r.role)
            }
            Some(AuthChange::UserRevokeRole(r)) => {
                auth.user_revoke_role_mut(engine, batch, &r.name, &r.role)
            }
            Some(AuthChange::RoleAdd(r)) => auth.role_add_mut(engine, batch, &r.name),
            Some(AuthChange::RoleDelete(r)) => auth.role_delete_mut(engine, batch, &r.role),
            Some(AuthChange::RoleGrantPermission(r)) => match r.perm {
                Some(perm) => auth.role_grant_permission_mut(engine, batch, &r.name, perm),
                None => Err(AuthError::PermissionMissing),
            },
            Some(AuthChange::RoleRevokePermission(r)) => {
                auth.role_revoke_permission_mut(engine, batch, &r.role, &r.key, &r.range_end)
            }
            // Applied by `apply_request`, which knows the entry's index.
            Some(AuthChange::IssueToken(_)) => Ok(()),
        }
    }

    fn apply_alarm(&self, req: &AlarmRequest, batch: &mut Batch) -> AlarmResponse {
        let alarms = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Activate) => {
                if self
                    .alarms
                    .activate(&self.engine, batch, req.member_id, req.alarm)
                {
                    tracing::warn!(
                        member_id = %format!("{:x}", req.member_id),
                        alarm = req.alarm,
                        "alarm raised"
                    );
                }
                vec![(req.member_id, req.alarm)]
            }
            Ok(AlarmAction::Deactivate) => {
                let cleared = self
                    .alarms
                    .deactivate(&self.engine, batch, req.member_id, req.alarm);
                if !cleared.is_empty() {
                    tracing::info!(count = cleared.len(), "alarm disarmed");
                }
                cleared
            }
            _ => self.alarms.list(),
        };
        AlarmResponse {
            header: None,
            alarms: alarms
                .into_iter()
                .map(|(member_id, alarm)| AlarmMember { member_id, alarm })
                .collect(),
        }
    }

    /// Runs `f` in one MVCC write txn; counts the operations it reports when it succeeds.
    fn write_txn<F>(&mut self, batch: &mut Batch, f: F) -> Pending
    where
        F: FnOnce(
            &mut crate::mvcc::WriteTxn<'_>,
            &dyn Fn(i64) -> bool,
        ) -> Result<(Response, MvccOps), TxnError>,
    {
        let lessor = self.lessor.clone();
        let lease_exists =
            move |id: i64| lessor.lock().unwrap_or_else(|p| p.into_inner()).exists(id);
        let mut txn = self.mvcc.write_txn();
        match f(&mut txn, &lease_exists) {
            Ok((response, ops)) => {
                self.record_mvcc(ops);
                Pending::Write(txn.finish(batch), response)
            }
            Err(e) => Pending::Done(Err(e.into())),
        }
    }

    fn record_mvcc(&self, ops: MvccOps) {
        if let Some(metrics) = &self.metrics {
            metrics.record_mvcc(ops);
        }
    }

    /// Makes a written change visible: index, revision, lease attachments, watchers.
    fn publish(&self, pending: crate::mvcc::Pending) -> i64 {
        let outcome = self.mvcc.publish(pending);
        if let Some(metrics) = &self.metrics {
            let put_bytes: usize = outcome
                .events
                .iter()
                .filter(|ev| ev.r#type == EventType::Put as i32)
                .filter_map(|ev| ev.kv.as_ref())
                .map(|kv| kv.key.len() + kv.value.len())
                .sum();
            if put_bytes > 0 {
                metrics.put_size_bytes.inc_by(put_bytes as i64);
            }
        }
        if !outcome.events.is_empty() {
            let mut lessor = self.lessor();
            for ev in &outcome.events {
                update_attachments(&mut lessor, ev);
            }
            drop(lessor);
            self.watch.notify(outcome.rev, &outcome.events);
        }
        outcome.rev
    }
}

/// An edit of one member's record.
type MemberEdit = Box<dyn FnOnce(&mut Member)>;

/// A change to one member's record that is not a raft configuration change.
enum MemberUpdate {
    Attributes(crate::proto::oxetcdpb::MemberAttributes),
    PeerUrls(MemberChange),
}

/// A request's effect, written to the batch but not yet visible.
enum Pending {
    Done(Reply),
    Write(crate::mvcc::Pending, Response),
    Compaction(crate::mvcc::CompactJob),
}

impl Pending {
    fn finish(self, applier: &mut Applier) -> Reply {
        match self {
            Pending::Done(reply) => {
                reply.map(|r| with_revision(r, applier.mvcc.current_revision()))
            }
            Pending::Write(pending, response) => {
                let rev = applier.publish(pending);
                Ok(with_revision(response, rev))
            }
            Pending::Compaction(job) => {
                let rev = applier.mvcc.current_revision();
                let compact_rev = applier.mvcc.publish_compaction(&job);
                applier.watch.compacted(compact_rev);
                let (done_tx, done_rx) = oneshot::channel();
                applier
                    .compactor
                    .submit(job, done_tx, &applier.engine, &applier.metrics);
                Ok(Response::Compaction {
                    response: CompactionResponse {
                        header: Some(ResponseHeader {
                            revision: rev,
                            ..ResponseHeader::default()
                        }),
                    },
                    physical_done: done_rx,
                })
            }
        }
    }
}

fn update_attachments(lessor: &mut Lessor, ev: &Event) {
    let Some(kv) = &ev.kv else {
        return;
    };
    if let Some(prev) = &ev.prev_kv
        && prev.lease != 0
    {
        lessor.detach(prev.lease, &prev.key);
    }
    if ev.r#type == EventType::Put as i32 && kv.lease != 0 {
        lessor.attach(kv.lease, &kv.key);
    }
}

/// The store revision a reply reports, if it has a header.
fn revision_of(reply: &Reply) -> Option<i64> {
    let header = match reply.as_ref().ok()? {
        Response::Put(r) => r.header.as_ref(),
        Response::DeleteRange(r) => r.header.as_ref(),
        Response::Txn(r) => r.header.as_ref(),
        Response::LeaseGrant(r) => r.header.as_ref(),
        Response::LeaseRevoke(r) => r.header.as_ref(),
        _ => None,
    };
    header.map(|h| h.revision)
}

fn header_at(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: rev,
        ..ResponseHeader::default()
    })
}

fn with_revision(response: Response, rev: i64) -> Response {
    match response {
        Response::Put(mut r) => {
            r.header = header_at(rev);
            Response::Put(r)
        }
        Response::DeleteRange(mut r) => {
            r.header = header_at(rev);
            Response::DeleteRange(r)
        }
        Response::Txn(mut r) => {
            r.header = header_at(rev);
            Response::Txn(r)
        }
        Response::LeaseGrant(mut r) => {
            r.header = header_at(rev);
            Response::LeaseGrant(r)
        }
        Response::LeaseRevoke(mut r) => {
            r.header = header_at(rev);
            Response::LeaseRevoke(r)
        }
        Response::Alarm(mut r) => {
            r.header = header_at(rev);
            Response::Alarm(r)
        }
        other => other,
    }
}

/// etcd's `warningApplyDuration`: an entry taking longer to apply counts as a slow apply.
const SLOW_APPLY: std::time::Duration = std::time::Duration::from_millis(100);

/// The alarm type raised when the backend outgrows its quota.
pub const NOSPACE: i32 = ALARM_NOSPACE;
