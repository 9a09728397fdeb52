//! Property test of the raft transport's receiving side: batches with wrong identities,
//! undecodable or mutated raft messages, and messages whose sender disagrees with their batch are
//! refused before raft sees them; every message from a stranger (a sender not in the member
//! list) is refused too, among them a heartbeat at a higher term whose commit index lies past the
//! member's log, which would stop raft-rs's thread if it were stepped. The member keeps serving.
//! Snapshot streams from a stranger, or longer than the member accepts, are refused too.
//!
//! Cases come from proptest's deterministic runner, so a failure replays as it happened; 300
//! batches against one member take a few seconds in release.

use std::time::{Duration, Instant};

use oxetcd::proto::oxetcdpb::peer_client::PeerClient;
use oxetcd::proto::oxetcdpb::{RaftBatch, SnapshotChunk};
use oxetcd::raft::codec::encode;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use raft::eraftpb::{Entry, Message, MessageType};

use crate::common::process::POLL_INTERVAL;
use crate::common::{self, Server};

const CASES: usize = 300;
/// The stranger the batches claim to come from (not a member).
const STRANGER: u64 = 0x5eed;

/// Message types raft-rs takes only from its own node.
const LOCAL: [MessageType; 7] = [
    MessageType::MsgHup,
    MessageType::MsgBeat,
    MessageType::MsgPropose,
    MessageType::MsgUnreachable,
    MessageType::MsgSnapStatus,
    MessageType::MsgCheckQuorum,
    MessageType::MsgReadIndex,
];

/// Answers, which raft-rs drops when they come from a node it does not track.
const RESPONSES: [MessageType; 6] = [
    MessageType::MsgAppendResponse,
    MessageType::MsgRequestVoteResponse,
    MessageType::MsgHeartbeatResponse,
    MessageType::MsgUnreachable,
    MessageType::MsgReadIndexResp,
    MessageType::MsgRequestPreVoteResponse,
];

#[derive(Debug, Clone)]
enum Case {
    /// A batch for another cluster or member: refused before any message is read.
    WrongIdentity { cluster_xor: u64, to_xor: u64 },
    /// Bytes that may or may not decode as a raft message.
    Bytes(Vec<u8>),
    /// A message whose own sender or receiver is not the batch's.
    Mismatched(Message),
    /// A well-formed message from a stranger: refused, whatever it says.
    Stranger(Message),
}

fn message(types: &'static [MessageType], max_term: u64) -> impl Strategy<Value = Message> {
    (
        0..types.len(),
        0..=max_term,
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        vec((any::<u64>(), any::<u64>(), vec(any::<u8>(), 0..32)), 0..3),
        any::<bool>(),
        vec(any::<u8>(), 0..16),
    )
        .prop_map(
            move |(t, term, log_term, index, commit, entries, reject, context)| {
                let mut m = Message::default();
                m.set_msg_type(types[t]);
                m.from = STRANGER;
                m.term = term;
                m.log_term = log_term;
                m.index = index;
                m.commit = commit;
                m.reject = reject;
                m.context = context;
                m.entries = entries
                    .into_iter()
                    .map(|(term, index, data)| Entry {
                        term,
                        index,
                        data,
                        ..Default::default()
                    })
                    .collect();
                m
            },
        )
}

/// Every type, at a term below the member's (0 is raft's "local" term, so from 1).
fn stale(term: u64) -> impl Strategy<Value = Message> {
    const ALL: [MessageType; 19] = [
        MessageType::MsgHup,
        MessageType::MsgBeat,
        MessageType::MsgPropose,
        MessageType::MsgAppend,
        MessageType::MsgAppendResponse,
        MessageType::MsgRequestVote,
        MessageType::MsgRequestVoteResponse,
        MessageType::MsgSnapshot,
        MessageType::MsgHeartbeat,
        MessageType::MsgHeartbeatResponse,
        MessageType::MsgUnreachable,
        MessageType::MsgSnapStatus,
        MessageType::MsgCheckQuorum,
        MessageType::MsgTransferLeader,
        MessageType::MsgTimeoutNow,
        MessageType::MsgReadIndex,
        MessageType::MsgReadIndexResp,
        MessageType::MsgRequestPreVote,
        MessageType::MsgRequestPreVoteResponse,
    ];
    message(&ALL, term.saturating_sub(2)).prop_map(|mut m| {
        m.term = m.term.max(1);
        // A stale snapshot message still needs a snapshot to be well formed.
        if m.get_msg_type() == MessageType::MsgSnapshot {
            m.mut_snapshot().mut_metadata().index = 1;
        }
        m
    })
}

fn case(term: u64) -> impl Strategy<Value = Case> {
    let mutated = message(&LOCAL, u64::MAX).prop_flat_map(|m| {
        let bytes = encode(&m);
        let len = bytes.len().max(1);
        (vec((0..len, any::<u8>()), 1..4), 0..=len).prop_map(move |(flips, cut)| {
            let mut bytes = bytes.clone();
            for (at, byte) in flips {
                if at < bytes.len() {
                    bytes[at] = byte;
                }
            }
            bytes.truncate(cut);
            bytes
        })
    });
    prop_oneof![
        (any::<u64>(), any::<u64>())
            .prop_filter("some identity is wrong", |(c, t)| *c != 0 || *t != 0)
            .prop_map(|(cluster_xor, to_xor)| Case::WrongIdentity {
                cluster_xor,
                to_xor
            }),
        vec(any::<u8>(), 0..64).prop_map(Case::Bytes),
        mutated.prop_map(Case::Bytes),
        (message(&LOCAL, u64::MAX), any::<u64>())
            .prop_map(|(mut m, from)| {
                m.from = from | (1 << 63);
                m
            })
            .prop_map(Case::Mismatched),
        message(&LOCAL, u64::MAX).prop_map(Case::Stranger),
        message(&RESPONSES, u64::MAX).prop_map(Case::Stranger),
        stale(term).prop_map(Case::Stranger),
        (term + 1..u64::MAX, 1u64 << 20..u64::MAX).prop_map(|(term, commit)| {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgHeartbeat);
            m.from = STRANGER;
            m.term = term;
            m.commit = commit;
            Case::Stranger(m)
        }),
    ]
}

/// What a test needs to speak to a member's peer service: a KV client, the member's cluster and
/// member IDs and raft term as Status reports them, and a client of the peer service.
struct PeerSide {
    client: etcd_client::Client,
    cluster_id: u64,
    member_id: u64,
    term: u64,
    peer: PeerClient<tonic::transport::Channel>,
}

async fn peer_side(server: &Server) -> PeerSide {
    let mut client = server.client().await;
    let status = client.status().await.expect("status");
    let header = status.header().expect("status has a header");
    let peer = PeerClient::connect(server.peer_url())
        .await
        .unwrap_or_else(|err| server.fail(&format!("connecting to the peer URL: {err}")));
    PeerSide {
        cluster_id: header.cluster_id(),
        member_id: header.member_id(),
        term: status.raft_term(),
        client,
        peer,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_damaged_raft_messages_never_stop_a_member() {
    if common::running_real_etcd() {
        eprintln!("the oxetcdpb.Peer service is oxetcd's own; skipped against etcd");
        return;
    }
    let mut server = Server::start();
    let PeerSide {
        mut client,
        cluster_id,
        member_id,
        term,
        mut peer,
    } = peer_side(&server).await;
    let strategy = case(term);
    let mut runner = TestRunner::deterministic();
    for n in 0..CASES {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        // Damaged bytes and mismatched messages come in the member's own name, so they pass the
        // sender check and reach the decoder; the rest come from the stranger.
        let from = match &case {
            Case::Bytes(_) | Case::Mismatched(_) => member_id,
            Case::WrongIdentity { .. } | Case::Stranger(_) => STRANGER,
        };
        let mut batch = RaftBatch {
            cluster_id,
            from,
            to: member_id,
            messages: Vec::new(),
        };
        match &case {
            Case::WrongIdentity {
                cluster_xor,
                to_xor,
            } => {
                batch.cluster_id ^= cluster_xor;
                batch.to ^= to_xor;
                batch.messages.push(encode(&Message::default()));
            }
            Case::Bytes(bytes) => batch.messages.push(bytes.clone()),
            Case::Mismatched(m) | Case::Stranger(m) => {
                let mut m = m.clone();
                m.to = member_id;
                batch.messages.push(encode(&m));
            }
        }
        let result = peer.raft(tokio_stream::iter([batch])).await;
        match (&case, result) {
            (Case::WrongIdentity { .. }, Err(status)) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::FailedPrecondition,
                    "case {n}: {case:?}"
                );
            }
            (Case::Mismatched(_), Err(status)) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::InvalidArgument,
                    "case {n}: {case:?}"
                );
            }
            (Case::Stranger(_), Err(status)) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::PermissionDenied,
                    "case {n}: {case:?}"
                );
            }
            (Case::Bytes(_), Err(status)) if status.code() == tonic::Code::InvalidArgument => {}
            (_, other) => server.fail(&format!("case {n}: {case:?} answered {other:?}")),
        }
        if !server.is_running() {
            server.fail(&format!("the member exited after case {n}: {case:?}"));
        }
    }
    // Still a working member: it takes a write and reads it back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.put("after-the-noise", "still-here", None).await {
            Ok(_) => break,
            Err(err) if Instant::now() < deadline => {
                eprintln!("put after the noise: {err}; retrying");
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            Err(err) => server.fail(&format!("put after the noise: {err}")),
        }
    }
    let got = client.get("after-the-noise", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"still-here");
    assert!(server.is_running());
}

/// A snapshot stream from a stranger is refused before any of it is written, and leaves no file
/// in the member's snapshot directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_from_a_stranger_is_refused() {
    if common::running_real_etcd() {
        eprintln!("the oxetcdpb.Peer service is oxetcd's own; skipped against etcd");
        return;
    }
    let mut server = Server::start();
    let PeerSide {
        mut client,
        cluster_id,
        member_id,
        term,
        mut peer,
    } = peer_side(&server).await;
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgSnapshot);
    message.from = STRANGER;
    message.to = member_id;
    message.term = term + 1;
    let meta = message.mut_snapshot().mut_metadata();
    meta.index = 1 << 30;
    meta.term = term + 1;
    let chunks = [
        SnapshotChunk {
            cluster_id,
            message: encode(&message),
            data: vec![0; 1 << 16],
        },
        SnapshotChunk {
            cluster_id: 0,
            message: Vec::new(),
            data: vec![0; 1 << 16],
        },
    ];
    let refused = peer
        .snapshot(tokio_stream::iter(chunks))
        .await
        .expect_err("a stranger's snapshot is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let snap_dir = server
        .dir()
        .join("data")
        .join(oxetcd::raft::snapshots::SNAP_DIR);
    let files: Vec<_> = std::fs::read_dir(&snap_dir)
        .map(|dir| dir.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        files.is_empty(),
        "{} holds {files:?} after a refused snapshot",
        snap_dir.display()
    );
    assert!(server.is_running());
    client
        .put("after-the-stranger", "v", None)
        .await
        .expect("a put after the refused snapshot");
}

/// A snapshot stream longer than the member accepts (twice its quota plus 64 MiB) is refused
/// with ResourceExhausted as it passes the limit, and its partial file is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_larger_than_the_limit_is_refused_and_removed() {
    if common::running_real_etcd() {
        eprintln!("the oxetcdpb.Peer service is oxetcd's own; skipped against etcd");
        return;
    }
    const QUOTA_BYTES: u64 = 1 << 20;
    const CHUNK_BYTES: usize = 1 << 20;
    let limit = oxetcd::peer::snapshot_bytes_limit(QUOTA_BYTES);
    let server = Server::start_with(&[&format!("--quota-backend-bytes={QUOTA_BYTES}")]);
    let PeerSide {
        mut client,
        cluster_id,
        member_id,
        term,
        mut peer,
    } = peer_side(&server).await;
    // In the member's own name, so only the size is wrong.
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgSnapshot);
    message.from = member_id;
    message.to = member_id;
    message.term = term;
    let meta = message.mut_snapshot().mut_metadata();
    meta.index = 1 << 30;
    meta.term = term;
    let chunks = limit / CHUNK_BYTES as u64 + 2;
    let first = SnapshotChunk {
        cluster_id,
        message: encode(&message),
        data: vec![0; CHUNK_BYTES],
    };
    let rest = (1..chunks).map(|_| SnapshotChunk {
        cluster_id: 0,
        message: Vec::new(),
        data: vec![0; CHUNK_BYTES],
    });
    let refused = peer
        .snapshot(tokio_stream::iter(std::iter::once(first).chain(rest)))
        .await
        .expect_err("an oversized snapshot is refused");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused
            .message()
            .contains(&format!("larger than this member accepts ({limit} bytes)")),
        "{refused:?}"
    );
    let snap_dir = server
        .dir()
        .join("data")
        .join(oxetcd::raft::snapshots::SNAP_DIR);
    let files: Vec<_> = std::fs::read_dir(&snap_dir)
        .map(|dir| dir.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        files.is_empty(),
        "{} holds {files:?} after a refused snapshot",
        snap_dir.display()
    );
    client
        .put("after-the-oversized-snapshot", "v", None)
        .await
        .expect("a put after the refused snapshot");
}
