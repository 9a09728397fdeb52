//! The wire and disk encoding of raft-rs's messages (`eraftpb`): the one module that names the
//! `protobuf` 2 runtime raft-rs 0.7 implements them with.
//!
//! raft-rs's `prost-codec` types implement `protobuf::Message` through a compatibility layer that
//! supports only the byte-slice methods (`write_to_bytes`, `merge_from_bytes`, `compute_size`);
//! the stream methods panic. Everything else in the crate encodes and decodes raft messages (log
//! entries, hard and conf state, transport messages, configuration changes) through here.

/// A raft-rs message type (`Entry`, `HardState`, `ConfState`, `Message`, `ConfChange`, ...), for
/// callers generic over them.
pub trait RaftMessage: protobuf::Message + Default {}

impl<M: protobuf::Message + Default> RaftMessage for M {}

/// A raft message could not be decoded; the text is the protobuf runtime's.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(protobuf::ProtobufError);

/// Encodes a raft message.
pub fn encode<M: RaftMessage>(message: &M) -> Vec<u8> {
    message
        .write_to_bytes()
        .expect("encoding an in-memory raft message cannot fail")
}

/// Decodes a raft message.
pub fn decode<M: RaftMessage>(bytes: &[u8]) -> Result<M, DecodeError> {
    let mut message = M::default();
    // The compatibility layer implements merge_from_bytes, not parse_from_bytes.
    message.merge_from_bytes(bytes).map_err(DecodeError)?;
    Ok(message)
}

/// The length of a raft message once encoded, in bytes.
pub fn encoded_len<M: RaftMessage>(message: &M) -> u64 {
    u64::from(message.compute_size())
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::{ConfChange, ConfChangeType, Entry, Message, MessageType};

    use super::*;

    #[test]
    fn round_trips_and_measures_raft_messages() {
        let entry = Entry {
            index: 7,
            term: 3,
            data: b"payload".to_vec(),
            ..Default::default()
        };
        let bytes = encode(&entry);
        assert_eq!(encoded_len(&entry), bytes.len() as u64);
        assert_eq!(decode::<Entry>(&bytes).unwrap(), entry);

        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.to = 2;
        message.from = 1;
        message.entries = vec![entry];
        assert_eq!(decode::<Message>(&encode(&message)).unwrap(), message);

        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddLearnerNode);
        cc.node_id = 9;
        assert_eq!(decode::<ConfChange>(&encode(&cc)).unwrap(), cc);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode::<Entry>(&[0xff, 0xff, 0xff]).is_err());
    }

    /// The rule this module exists for: no other file under `src/` names the `protobuf` runtime.
    #[test]
    fn protobuf_is_named_only_here() {
        fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    files(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut all = Vec::new();
        files(&root.join("src"), &mut all);
        let naming: Vec<_> = all
            .iter()
            .filter(|p| std::fs::read_to_string(p).unwrap().contains("protobuf"))
            .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
            .collect();
        assert_eq!(naming, [std::path::Path::new("src/raft/codec.rs")]);
    }
}

/// Properties of the raft codec: random messages round-trip, and random or mutated bytes decode
/// or fail without a panic. 256 cases each; the module runs in about a second in release.
#[cfg(test)]
mod props {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use raft::eraftpb::{
        ConfChange, ConfChangeSingle, ConfChangeV2, ConfState, Entry, HardState, Message, Snapshot,
        SnapshotMetadata,
    };

    use super::*;

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..max)
    }

    fn entry() -> impl Strategy<Value = Entry> {
        (
            0..4i32,
            any::<u64>(),
            any::<u64>(),
            bytes(64),
            bytes(16),
            any::<bool>(),
        )
            .prop_map(|(entry_type, term, index, data, context, sync_log)| Entry {
                entry_type,
                term,
                index,
                data,
                context,
                sync_log,
            })
    }

    fn conf_state() -> impl Strategy<Value = ConfState> {
        (
            vec(any::<u64>(), 0..4),
            vec(any::<u64>(), 0..4),
            any::<bool>(),
        )
            .prop_map(|(voters, learners, auto_leave)| ConfState {
                voters,
                learners,
                auto_leave,
                ..Default::default()
            })
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            (
                0..20i32,
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
            ),
            (
                any::<u64>(),
                vec(entry(), 0..4),
                any::<u64>(),
                any::<bool>(),
            ),
            proptest::option::of((bytes(64), conf_state(), any::<u64>(), any::<u64>())),
            (bytes(16), any::<i64>()),
        )
            .prop_map(
                |(
                    (msg_type, to, from, term, log_term),
                    (index, entries, commit, reject),
                    snapshot,
                    (context, priority),
                )| Message {
                    msg_type,
                    to,
                    from,
                    term,
                    log_term,
                    index,
                    entries,
                    commit,
                    reject,
                    snapshot: snapshot.map(|(data, conf_state, index, term)| Snapshot {
                        data,
                        metadata: Some(SnapshotMetadata {
                            conf_state: Some(conf_state),
                            index,
                            term,
                        }),
                    }),
                    context,
                    priority,
                    ..Default::default()
                },
            )
    }

    /// `bytes` with up to four bytes overwritten, a cut, or a stretch inserted.
    fn mutated(original: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        let len = original.len().max(1);
        (
            vec((0..len, any::<u8>()), 0..4),
            proptest::option::of(0..=len),
            proptest::option::of((0..=len, bytes(8))),
        )
            .prop_map(move |(flips, cut, insert)| {
                let mut bytes = original.clone();
                for (at, byte) in flips {
                    if at < bytes.len() {
                        bytes[at] = byte;
                    }
                }
                if let Some((at, extra)) = insert {
                    let tail = bytes.split_off(at.min(bytes.len()));
                    bytes.extend(extra);
                    bytes.extend(tail);
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut);
                }
                bytes
            })
    }

    /// Decodes `bytes` as every raft message type; whatever decodes re-encodes to something
    /// that decodes to the same message.
    fn decode_everything(bytes: &[u8]) -> Result<(), TestCaseError> {
        fn one<M: RaftMessage + PartialEq + std::fmt::Debug>(
            bytes: &[u8],
        ) -> Result<(), TestCaseError> {
            if let Ok(message) = decode::<M>(bytes) {
                let again = encode(&message);
                prop_assert_eq!(encoded_len(&message), again.len() as u64);
                prop_assert_eq!(decode::<M>(&again).unwrap(), message);
            }
            Ok(())
        }
        one::<Entry>(bytes)?;
        one::<Message>(bytes)?;
        one::<HardState>(bytes)?;
        one::<ConfState>(bytes)?;
        one::<ConfChange>(bytes)?;
        one::<ConfChangeV2>(bytes)?;
        one::<ConfChangeSingle>(bytes)?;
        one::<Snapshot>(bytes)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn messages_round_trip(m in message()) {
            let bytes = encode(&m);
            prop_assert_eq!(encoded_len(&m), bytes.len() as u64);
            prop_assert_eq!(decode::<Message>(&bytes).unwrap(), m);
        }

        #[test]
        fn entries_and_hard_state_round_trip(entry in entry(), term: u64, vote: u64, commit: u64) {
            prop_assert_eq!(decode::<Entry>(&encode(&entry)).unwrap(), entry);
            let hs = HardState { term, vote, commit };
            prop_assert_eq!(decode::<HardState>(&encode(&hs)).unwrap(), hs);
        }

        #[test]
        fn random_bytes_never_panic(bytes in bytes(256)) {
            decode_everything(&bytes)?;
        }

        #[test]
        fn mutated_messages_never_panic(
            bytes in message().prop_flat_map(|m| mutated(encode(&m)))
        ) {
            decode_everything(&bytes)?;
        }
    }
}
