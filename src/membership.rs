//! Cluster identity and members: the cluster ID and each member's ID, name and URLs, persisted in
//! the `meta` column family when the member first starts; how member and cluster IDs are derived;
//! and the raft configuration a member list stands for.

use prost::Message as _;
use raft::eraftpb::ConfState;

use crate::proto::etcdserverpb::Member;
use crate::storage::{Batch, Cf, Engine, StorageError};

pub const KEY_CLUSTER_ID: &[u8] = b"cluster_id";
pub const KEY_MEMBER_ID: &[u8] = b"member_id";
pub const KEY_MEMBERS: &[u8] = b"members";

/// Who this member is and which members the cluster has.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    pub cluster_id: u64,
    pub member_id: u64,
    pub members: Vec<Member>,
}

/// The persisted member list (a MemberListResponse's members, reused as the storage format).
#[derive(Clone, PartialEq, prost::Message)]
struct MemberRecords {
    #[prost(message, repeated, tag = "1")]
    members: Vec<Member>,
}

/// Decodes a persisted member list.
pub fn decode_members(bytes: &[u8]) -> Result<Vec<Member>, prost::DecodeError> {
    MemberRecords::decode(bytes).map(|r| r.members)
}

/// Encodes a member list for persisting.
pub fn encode_members(members: Vec<Member>) -> Vec<u8> {
    MemberRecords { members }.encode_to_vec()
}

impl Membership {
    /// Loads the identity written at first start, if any.
    pub fn load(engine: &Engine) -> Result<Option<Membership>, StorageError> {
        let (Some(cluster), Some(member), Some(members)) = (
            engine.get(Cf::Meta, KEY_CLUSTER_ID)?,
            engine.get(Cf::Meta, KEY_MEMBER_ID)?,
            engine.get(Cf::Meta, KEY_MEMBERS)?,
        ) else {
            return Ok(None);
        };
        let corrupt = |key: &[u8], reason: String| StorageError::Corrupt {
            cf: Cf::Meta.name(),
            key: key.to_vec(),
            reason,
        };
        let id = |key: &[u8], bytes: Vec<u8>| {
            <[u8; 8]>::try_from(bytes.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt(key, "id is not 8 bytes".into()))
        };
        Ok(Some(Membership {
            cluster_id: id(KEY_CLUSTER_ID, cluster)?,
            member_id: id(KEY_MEMBER_ID, member)?,
            members: MemberRecords::decode(members.as_slice())
                .map_err(|e| corrupt(KEY_MEMBERS, e.to_string()))?
                .members,
        }))
    }

    /// Adds this identity to `batch`.
    pub fn save(&self, engine: &Engine, batch: &mut Batch) {
        batch.put(
            engine,
            Cf::Meta,
            KEY_CLUSTER_ID,
            &self.cluster_id.to_be_bytes(),
        );
        batch.put(
            engine,
            Cf::Meta,
            KEY_MEMBER_ID,
            &self.member_id.to_be_bytes(),
        );
        let records = MemberRecords {
            members: self.members.clone(),
        };
        batch.put(engine, Cf::Meta, KEY_MEMBERS, &records.encode_to_vec());
    }

    /// Builds the identity of a new cluster from `--initial-cluster` (name, peer URLs) pairs.
    /// Client URLs start empty: each member publishes its own through raft once it runs.
    pub fn bootstrap(
        name: &str,
        initial_cluster: &[(String, Vec<String>)],
        cluster_token: &str,
    ) -> Option<Membership> {
        let members: Vec<Member> = initial_cluster
            .iter()
            .map(|(member_name, peer_urls)| Member {
                id: member_id(peer_urls, cluster_token),
                name: member_name.clone(),
                peer_ur_ls: peer_urls.clone(),
                client_ur_ls: Vec::new(),
                is_learner: false,
            })
            .collect();
        let me = members.iter().find(|m| m.name == name)?.id;
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        Some(Membership {
            cluster_id: cluster_id(&ids, cluster_token),
            member_id: me,
            members,
        })
    }

    /// IDs of the voting members.
    pub fn voters(&self) -> Vec<u64> {
        self.members
            .iter()
            .filter(|m| !m.is_learner)
            .map(|m| m.id)
            .collect()
    }
}

/// The raft configuration of a member list: its voters and learners.
pub fn conf_state_from(members: &[Member]) -> ConfState {
    let voters: Vec<u64> = members
        .iter()
        .filter(|m| !m.is_learner)
        .map(|m| m.id)
        .collect();
    let learners: Vec<u64> = members
        .iter()
        .filter(|m| m.is_learner)
        .map(|m| m.id)
        .collect();
    ConfState::from((voters, learners))
}

/// FNV-1a, 64 bit: stable across builds and platforms, so every member derives the same IDs from
/// the same flags.
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate parts so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// A member's ID: derived from its sorted peer URLs and the cluster token, as etcd does.
pub fn member_id(peer_urls: &[String], cluster_token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let joined = urls.join(",");
    fnv1a64(&[joined.as_bytes(), cluster_token.as_bytes()])
}

/// The cluster's ID: derived from the sorted member IDs and the cluster token.
pub fn cluster_id(member_ids: &[u64], cluster_token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    fnv1a64(&[&bytes, cluster_token.as_bytes()])
}

/// Two members, voter 1 and learner 2, for tests of what a member list becomes.
#[cfg(test)]
pub(crate) fn voter_1_learner_2() -> Vec<Member> {
    let voter = Member {
        id: 1,
        ..Member::default()
    };
    let learner = Member {
        id: 2,
        is_learner: true,
        ..Member::default()
    };
    vec![voter, learner]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_order_independent() {
        let a = member_id(&["http://127.0.0.1:2380".into()], "etcd-cluster");
        assert_eq!(
            a,
            member_id(&["http://127.0.0.1:2380".into()], "etcd-cluster")
        );
        assert_ne!(a, member_id(&["http://127.0.0.1:2380".into()], "other"));
        assert_eq!(cluster_id(&[3, 1, 2], "t"), cluster_id(&[1, 2, 3], "t"));
    }

    #[test]
    fn conf_state_splits_voters_and_learners() {
        let members = voter_1_learner_2();
        let cs = conf_state_from(&members);
        assert_eq!(cs.voters, vec![1]);
        assert_eq!(cs.learners, vec![2]);
        let decoded = decode_members(&encode_members(members)).expect("decodes");
        assert_eq!(decoded.len(), 2);
    }
}

/// Properties of the persisted member list (256 cases each, milliseconds in release).
#[cfg(test)]
mod props {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    fn member() -> impl Strategy<Value = Member> {
        (
            any::<u64>(),
            ".{0,12}",
            vec(".{0,24}", 0..3),
            vec(".{0,24}", 0..3),
            any::<bool>(),
        )
            .prop_map(|(id, name, peer_ur_ls, client_ur_ls, is_learner)| Member {
                id,
                name,
                peer_ur_ls,
                client_ur_ls,
                is_learner,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn member_lists_round_trip(members in vec(member(), 0..5)) {
            prop_assert_eq!(decode_members(&encode_members(members.clone())).unwrap(), members.clone());
            let cs = conf_state_from(&members);
            prop_assert_eq!(cs.voters.len() + cs.learners.len(), members.len());
        }

        #[test]
        fn random_and_mutated_bytes_decode_or_fail(
            members in vec(member(), 0..3),
            flips in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            tail in vec(any::<u8>(), 0..16),
        ) {
            let mut bytes = encode_members(members);
            if !bytes.is_empty() {
                for (at, byte) in flips {
                    let at = at.index(bytes.len());
                    bytes[at] = byte;
                }
            }
            bytes.extend(tail);
            if let Ok(decoded) = decode_members(&bytes) {
                let _ = conf_state_from(&decoded);
            }
        }
    }
}
