//! Typed proposals: each request type that goes through raft names its response type
//! ([`Proposal`]), and every way a proposal can fail is one [`ProposeError`].
//!
//! The apply thread answers a waiter with the untyped `apply::Response`; the request's type
//! decides which variant that is, so the conversion back to a typed response lives here, once,
//! instead of in every service.

use tokio::sync::oneshot;

use super::NodeError;
use crate::apply::{ApplyError, Response};
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, Member, PutRequest, PutResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use crate::proto::oxetcdpb::internal_request::Request;
use crate::proto::oxetcdpb::{
    AuthChange, Caller, LeaseCheckpointRequest, MemberAttributes, MemberChange,
};

/// Who a proposal is for: the member itself (lease expiry, auto compaction, alarms, its published
/// attributes), or a client, whose permissions apply checks while auth is enabled. Every caller
/// of `NodeHandle::propose` says which, so a client request cannot skip the check by omission.
#[derive(Debug, Clone)]
pub enum Origin {
    Member,
    Client(Caller),
}

impl Origin {
    pub(super) fn into_caller(self) -> Option<Caller> {
        match self {
            Origin::Member => None,
            Origin::Client(caller) => Some(caller),
        }
    }
}

/// A request carried through raft, and what applying it answers.
pub trait Proposal: Send + 'static {
    /// What the request's proposer gets back once it is applied.
    type Response: Send + 'static;
    /// The request's name in errors.
    const NAME: &'static str;
    /// The request as a raft entry carries it.
    fn into_request(self) -> Request;
    /// The typed response, if `response` is the kind applying this request produces (it always
    /// is; anything else is a bug reported as [`ProposeError::UnexpectedResponse`]).
    fn from_response(response: Response) -> Option<Self::Response>;
    /// The response's header, whose revision apply set; the node adds its identity and term.
    fn header_mut(_response: &mut Self::Response) -> Option<&mut ResponseHeader> {
        None
    }
}

/// Why a proposal had no effect: consensus could not carry it, or applying it refused it.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// No leader, stopped, timed out, too many requests, too large.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// Applied, and refused by the state machine (a failed check, no space, a lease or member
    /// that does not exist, ...).
    #[error(transparent)]
    Refused(ApplyError),
    /// Apply answered a request with a response of another kind (a bug).
    #[error("unexpected apply result for {request}")]
    UnexpectedResponse { request: &'static str },
}

impl From<ApplyError> for ProposeError {
    fn from(e: ApplyError) -> ProposeError {
        match e {
            // The proposal never entered the log: there was no leader to take it.
            ApplyError::Dropped => ProposeError::Node(NodeError::NoLeader),
            refused => ProposeError::Refused(refused),
        }
    }
}

/// Request types whose response is the matching variant with a header.
macro_rules! proposal_with_header {
    ($request:ty, $response:ty, $variant:ident, $name:literal) => {
        impl Proposal for $request {
            type Response = $response;
            const NAME: &'static str = $name;
            fn into_request(self) -> Request {
                Request::$variant(self)
            }
            fn from_response(response: Response) -> Option<$response> {
                match response {
                    Response::$variant(r) => Some(r),
                    _ => None,
                }
            }
            fn header_mut(response: &mut $response) -> Option<&mut ResponseHeader> {
                response.header.as_mut()
            }
        }
    };
}

proposal_with_header!(PutRequest, PutResponse, Put, "put");
proposal_with_header!(
    DeleteRangeRequest,
    DeleteRangeResponse,
    DeleteRange,
    "delete range"
);
proposal_with_header!(TxnRequest, TxnResponse, Txn, "txn");
proposal_with_header!(
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseGrant,
    "lease grant"
);
proposal_with_header!(
    LeaseRevokeRequest,
    LeaseRevokeResponse,
    LeaseRevoke,
    "lease revoke"
);
proposal_with_header!(AlarmRequest, AlarmResponse, Alarm, "alarm");

/// A compaction's logical part is done when it is applied; the physical part (removing the
/// compacted revisions from disk) finishes later.
#[derive(Debug)]
pub struct Compaction {
    pub response: CompactionResponse,
    /// Fires when the compacted revisions are gone from disk.
    pub physical_done: oneshot::Receiver<()>,
}

impl Proposal for CompactionRequest {
    type Response = Compaction;
    const NAME: &'static str = "compaction";
    fn into_request(self) -> Request {
        Request::Compaction(self)
    }
    fn from_response(response: Response) -> Option<Compaction> {
        match response {
            Response::Compaction {
                response,
                physical_done,
            } => Some(Compaction {
                response,
                physical_done,
            }),
            _ => None,
        }
    }
    fn header_mut(compaction: &mut Compaction) -> Option<&mut ResponseHeader> {
        compaction.response.header.as_mut()
    }
}

impl Proposal for LeaseCheckpointRequest {
    type Response = ();
    const NAME: &'static str = "lease checkpoint";
    fn into_request(self) -> Request {
        Request::LeaseCheckpoint(self)
    }
    fn from_response(response: Response) -> Option<()> {
        matches!(response, Response::LeaseCheckpoint).then_some(())
    }
}

/// A member's published name and client URLs; answers the member list after the change.
impl Proposal for MemberAttributes {
    type Response = Vec<Member>;
    const NAME: &'static str = "member attributes";
    fn into_request(self) -> Request {
        Request::MemberAttributes(self)
    }
    fn from_response(response: Response) -> Option<Vec<Member>> {
        members(response)
    }
}

/// New peer URLs for an existing member (etcd's MemberUpdate; a normal entry, not a raft
/// configuration change); answers the member list after the change.
#[derive(Debug, Clone)]
pub struct MemberPeerUrls(pub Member);

impl Proposal for MemberPeerUrls {
    type Response = Vec<Member>;
    const NAME: &'static str = "member update";
    fn into_request(self) -> Request {
        Request::MemberUpdate(MemberChange {
            request_id: 0,
            member: Some(self.0),
        })
    }
    fn from_response(response: Response) -> Option<Vec<Member>> {
        members(response)
    }
}

/// The member list a membership change answers.
pub(super) fn members(response: Response) -> Option<Vec<Member>> {
    match response {
        Response::Members(members) => Some(members),
        _ => None,
    }
}

/// A change to the auth store; the API layer answers with the store as it is after it.
impl Proposal for AuthChange {
    type Response = ();
    const NAME: &'static str = "auth change";
    fn into_request(self) -> Request {
        Request::Auth(self)
    }
    fn from_response(response: Response) -> Option<()> {
        matches!(response, Response::AuthChanged).then_some(())
    }
}

/// Authenticate: answers the token every member assigned.
#[derive(Debug, Clone)]
pub struct IssueToken(pub crate::proto::oxetcdpb::IssueToken);

impl Proposal for IssueToken {
    type Response = String;
    const NAME: &'static str = "authenticate";
    fn into_request(self) -> Request {
        Request::Auth(AuthChange {
            change: Some(crate::proto::oxetcdpb::auth_change::Change::IssueToken(
                self.0,
            )),
        })
    }
    fn from_response(response: Response) -> Option<String> {
        match response {
            Response::Token(token) => Some(token),
            _ => None,
        }
    }
}
