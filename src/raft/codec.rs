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
