//! The one place where oxetcd's errors become gRPC statuses, with etcd's exact codes and messages.
//!
//! Clients (the Go client, etcdctl, etcd-client) match on the message text, so every string here is
//! part of the wire contract.

use tonic::{Code, Status};

/// Every error a client can receive from the etcd API, by etcd's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: request timed out")]
    Timeout,
    /// MoveLeader gave up waiting for the target to lead; not in etcd's gRPC error map, so it
    /// travels with code Unknown.
    #[error("etcdserver: request timed out, leader transfer took too long")]
    TimeoutLeaderTransfer,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: not capable")]
    NotCapable,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: watch canceled")]
    WatchCanceled,
    /// Anything else: etcd sends these with code Unknown and the error's own text.
    #[error("{0}")]
    Other(String),
    /// The leader's answer to a request this member forwarded to it, passed on as it came.
    #[error("{message}")]
    FromLeader { code: Code, message: String },
}

impl EtcdError {
    /// The gRPC code etcd uses for this error.
    pub fn code(&self) -> Code {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | InvalidSortOption | RequestTooLarge | UserEmpty | RoleEmpty | PermissionNotGiven
            | InvalidAuthMgmt | AuthOldRevision | AuthFailed => Code::InvalidArgument,
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            NoSpace | TooManyRequests => Code::ResourceExhausted,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExist
            | NotLeader
            | NotCapable
            | AuthNotEnabled
            | RootUserNotExist
            | RootRoleNotExist
            | UserAlreadyExist
            | UserNotFound
            | RoleAlreadyExist
            | RoleNotFound
            | RoleNotGranted
            | PermissionNotGranted
            | MemberNotLearner
            | BadLeaderTransferee
            | MemberExists
            | PeerUrlExists
            | LearnerNotReady
            | TooManyLearners
            | NotEnoughStartedMembers
            | NotSupportedForLearner => Code::FailedPrecondition,
            MemberBadUrls => Code::InvalidArgument,
            NoLeader | LeaderChanged | Stopped | Timeout | Unhealthy => Code::Unavailable,
            Corrupt => Code::DataLoss,
            WatchCanceled => Code::Cancelled,
            TimeoutLeaderTransfer | Other(_) => Code::Unknown,
            FromLeader { code, .. } => *code,
        }
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

/// Every variant by name (no catch-all), so a new `TxnError` must be given its etcd error here.
impl From<crate::txn::TxnError> for EtcdError {
    fn from(e: crate::txn::TxnError) -> EtcdError {
        use crate::txn::TxnError as T;
        match e {
            T::KeyNotProvided => EtcdError::EmptyKey,
            T::KeyNotFound | T::EmptyOp => EtcdError::KeyNotFound,
            T::ValueProvided => EtcdError::ValueProvided,
            T::LeaseProvided { .. } => EtcdError::LeaseProvided,
            T::TooManyOps { .. } => EtcdError::TooManyOps,
            T::DuplicateKey { .. } => EtcdError::DuplicateKey,
            T::InvalidSortOption { .. } => EtcdError::InvalidSortOption,
            T::LeaseNotFound { .. } => EtcdError::LeaseNotFound,
            T::Compacted { .. } => EtcdError::Compacted,
            T::FutureRev { .. } => EtcdError::FutureRev,
            T::NotReadOnly => EtcdError::Other(e.to_string()),
            T::Storage(e) => e.into(),
        }
    }
}

/// Every variant by name, so a new refusal of the auth store must be given its etcd error here.
impl From<crate::auth::AuthError> for EtcdError {
    fn from(e: crate::auth::AuthError) -> EtcdError {
        use crate::auth::AuthError as A;
        match e {
            A::UserEmpty => EtcdError::UserEmpty,
            A::UserExists(_) => EtcdError::UserAlreadyExist,
            A::UserNotFound(_) => EtcdError::UserNotFound,
            A::RoleEmpty => EtcdError::RoleEmpty,
            A::RoleExists(_) => EtcdError::RoleAlreadyExist,
            A::RoleNotFound(_) => EtcdError::RoleNotFound,
            A::RoleNotGranted { .. } => EtcdError::RoleNotGranted,
            A::PermissionNotGranted { .. } => EtcdError::PermissionNotGranted,
            A::PermissionMissing => EtcdError::PermissionNotGiven,
            A::RootUserMissing => EtcdError::RootUserNotExist,
            A::RootRoleMissing => EtcdError::RootRoleNotExist,
            A::InvalidManagement => EtcdError::InvalidAuthMgmt,
            A::PermissionDenied => EtcdError::PermissionDenied,
            A::OldRevision => EtcdError::AuthOldRevision,
            A::AuthFailed => EtcdError::AuthFailed,
        }
    }
}

impl From<crate::mvcc::MvccError> for EtcdError {
    fn from(e: crate::mvcc::MvccError) -> EtcdError {
        use crate::mvcc::MvccError as M;
        match e {
            M::Compacted { .. } => EtcdError::Compacted,
            M::FutureRev { .. } => EtcdError::FutureRev,
            other => EtcdError::Other(other.to_string()),
        }
    }
}

impl From<crate::node::NodeError> for EtcdError {
    fn from(e: crate::node::NodeError) -> EtcdError {
        use crate::node::NodeError as N;
        match e {
            N::NoLeader => EtcdError::NoLeader,
            N::Stopped => EtcdError::Stopped,
            N::Timeout => EtcdError::Timeout,
            N::TooManyRequests => EtcdError::TooManyRequests,
            N::RequestTooLarge => EtcdError::RequestTooLarge,
        }
    }
}

impl From<crate::node::ProposeError> for EtcdError {
    fn from(e: crate::node::ProposeError) -> EtcdError {
        use crate::node::ProposeError as P;
        match e {
            P::Node(e) => e.into(),
            P::Refused(e) => e.into(),
            e @ P::UnexpectedResponse { .. } => EtcdError::Other(e.to_string()),
        }
    }
}

impl From<crate::node::ApplyError> for EtcdError {
    fn from(e: crate::node::ApplyError) -> EtcdError {
        use crate::node::ApplyError as A;
        match e {
            // The node turns a dropped proposal into `no leader` before it gets here.
            A::Dropped => EtcdError::NoLeader,
            A::Txn(e) => e.into(),
            A::Mvcc(e) => e.into(),
            A::Lease(e) => e.into(),
            A::NoSpace => EtcdError::NoSpace,
            A::Corrupt => EtcdError::Corrupt,
            A::MemberExists => EtcdError::MemberExists,
            A::MemberNotFound => EtcdError::MemberNotFound,
            A::MemberNotLearner => EtcdError::MemberNotLearner,
            A::Auth(e) => e.into(),
        }
    }
}

impl From<crate::lease::LeaseError> for EtcdError {
    fn from(e: crate::lease::LeaseError) -> EtcdError {
        use crate::lease::LeaseError as L;
        match e {
            L::NotFound => EtcdError::LeaseNotFound,
            L::Exists => EtcdError::LeaseExist,
            L::TtlTooLarge => EtcdError::LeaseTtlTooLarge,
            other => EtcdError::Other(other.to_string()),
        }
    }
}

/// A follower's failure to reach the leader, as etcd reports it to the client.
impl From<crate::peer::forward::ForwardError> for EtcdError {
    fn from(e: crate::peer::forward::ForwardError) -> EtcdError {
        match e {
            crate::peer::forward::ForwardError::NoLeader => EtcdError::NoLeader,
            crate::peer::forward::ForwardError::Timeout => EtcdError::Timeout,
            // Callers answer locally instead; if it ever leaks, leadership moved to this member
            // while the request was forwarded.
            crate::peer::forward::ForwardError::LocalLeader => EtcdError::LeaderChanged,
            crate::peer::forward::ForwardError::Refused { code, message } => {
                EtcdError::FromLeader {
                    code: Code::from_i32(code),
                    message,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_match_etcd() {
        let cases = [
            (
                EtcdError::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                EtcdError::Compacted,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                EtcdError::FutureRev,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                EtcdError::NoSpace,
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                EtcdError::LeaseNotFound,
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                EtcdError::NoLeader,
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                EtcdError::BadLeaderTransferee,
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ),
            (
                EtcdError::TimeoutLeaderTransfer,
                Code::Unknown,
                "etcdserver: request timed out, leader transfer took too long",
            ),
            (
                EtcdError::MemberNotLearner,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            (
                EtcdError::MemberNotFound,
                Code::NotFound,
                "etcdserver: member not found",
            ),
            (
                EtcdError::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
        ];
        for (err, code, msg) in cases {
            let status = Status::from(err);
            assert_eq!((status.code(), status.message()), (code, msg));
        }
    }

    /// The auth store's refusals, with the codes and messages etcd 3.4 sends (checked with
    /// Debian's etcd and etcdctl).
    #[test]
    fn auth_errors_read_as_etcd_errors() {
        use crate::auth::AuthError as A;
        let cases = [
            (
                A::UserEmpty,
                Code::InvalidArgument,
                "etcdserver: user name is empty",
            ),
            (
                A::UserExists("a".into()),
                Code::FailedPrecondition,
                "etcdserver: user name already exists",
            ),
            (
                A::UserNotFound("a".into()),
                Code::FailedPrecondition,
                "etcdserver: user name not found",
            ),
            (
                A::RoleEmpty,
                Code::InvalidArgument,
                "etcdserver: role name is empty",
            ),
            (
                A::RoleExists("r".into()),
                Code::FailedPrecondition,
                "etcdserver: role name already exists",
            ),
            (
                A::RoleNotFound("r".into()),
                Code::FailedPrecondition,
                "etcdserver: role name not found",
            ),
            (
                A::RoleNotGranted {
                    user: "a".into(),
                    role: "r".into(),
                },
                Code::FailedPrecondition,
                "etcdserver: role is not granted to the user",
            ),
            (
                A::PermissionNotGranted {
                    role: "r".into(),
                    key: b"k".to_vec(),
                },
                Code::FailedPrecondition,
                "etcdserver: permission is not granted to the role",
            ),
            (
                A::PermissionMissing,
                Code::InvalidArgument,
                "etcdserver: permission not given",
            ),
            (
                A::RootUserMissing,
                Code::FailedPrecondition,
                "etcdserver: root user does not exist",
            ),
            (
                A::RootRoleMissing,
                Code::FailedPrecondition,
                "etcdserver: root user does not have root role",
            ),
            (
                A::InvalidManagement,
                Code::InvalidArgument,
                "etcdserver: invalid auth management",
            ),
            (
                A::PermissionDenied,
                Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                A::OldRevision,
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
            ),
            (
                A::AuthFailed,
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
        ];
        for (err, code, msg) in cases {
            let status = Status::from(EtcdError::from(err));
            assert_eq!((status.code(), status.message()), (code, msg));
        }
    }

    #[test]
    fn txn_errors_read_as_etcd_errors() {
        use crate::txn::TxnError as T;
        let cases = [
            (
                T::KeyNotProvided,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                T::KeyNotFound,
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                T::EmptyOp,
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                T::ValueProvided,
                Code::InvalidArgument,
                "etcdserver: value is provided",
            ),
            (
                T::LeaseProvided { lease_id: 3 },
                Code::InvalidArgument,
                "etcdserver: lease is provided",
            ),
            (
                T::TooManyOps { ops: 129, max: 128 },
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                T::DuplicateKey { key: b"k".to_vec() },
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                T::InvalidSortOption {
                    sort_order: 3,
                    sort_target: 0,
                },
                Code::InvalidArgument,
                "etcdserver: invalid sort option",
            ),
            (
                T::LeaseNotFound { lease_id: 99 },
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                T::Compacted {
                    requested: 2,
                    compacted: 3,
                },
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                T::FutureRev {
                    requested: 8,
                    current: 7,
                },
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                T::NotReadOnly,
                Code::Unknown,
                "txn has write operations and cannot be served as a read",
            ),
            (
                T::Storage(crate::mvcc::MvccError::Corrupt("bad key".to_string())),
                Code::Unknown,
                "corrupt mvcc data: bad key",
            ),
        ];
        for (error, code, message) in cases {
            let status = Status::from(EtcdError::from(error));
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }

    #[test]
    fn forwarding_failures_read_as_etcd_errors() {
        use crate::peer::forward::ForwardError;
        let cases = [
            (
                ForwardError::NoLeader,
                tonic::Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                ForwardError::Timeout,
                tonic::Code::Unavailable,
                "etcdserver: request timed out",
            ),
            (
                ForwardError::Refused {
                    code: tonic::Code::FailedPrecondition as i32,
                    message: "etcdserver: unhealthy cluster".into(),
                },
                tonic::Code::FailedPrecondition,
                "etcdserver: unhealthy cluster",
            ),
        ];
        for (error, code, message) in cases {
            let status = Status::from(EtcdError::from(error));
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }
}
