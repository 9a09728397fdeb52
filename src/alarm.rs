//! Active alarms (NOSPACE, CORRUPT): replicated through raft, persisted in the `meta` column
//! family, and consulted on every write.

use std::sync::Mutex;

use prost::Message as _;

use crate::proto::oxetcdpb::{AlarmList, AlarmRecord};
use crate::storage::{Batch, Cf, Engine, StorageError};

/// The meta key of the active alarms (an `oxetcdpb.AlarmList`).
pub const KEY_ALARMS: &[u8] = b"alarms";

/// etcd's alarm types, by their wire values.
pub const ALARM_NOSPACE: i32 = 1;
pub const ALARM_CORRUPT: i32 = 2;

/// The set of active alarms of the cluster.
#[derive(Default)]
pub struct Alarms {
    active: Mutex<Vec<(u64, i32)>>,
}

impl Alarms {
    /// Loads the persisted alarms.
    pub fn open(engine: &Engine) -> Result<Alarms, StorageError> {
        let active = match engine.get(Cf::Meta, KEY_ALARMS)? {
            Some(bytes) => decode(&bytes).map_err(|e| StorageError::Corrupt {
                cf: Cf::Meta.name(),
                key: KEY_ALARMS.to_vec(),
                reason: e.to_string(),
            })?,
            None => Vec::new(),
        };
        Ok(Alarms {
            active: Mutex::new(active),
        })
    }

    /// Reloads the persisted alarms (after a raft snapshot replaced them).
    pub fn reload(&self, engine: &Engine) -> Result<(), StorageError> {
        let fresh = Alarms::open(engine)?;
        *self.lock() = fresh.list();
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, i32)>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn nospace_active(&self) -> bool {
        self.lock().iter().any(|(_, a)| *a == ALARM_NOSPACE)
    }

    pub fn corrupt_active(&self) -> bool {
        self.lock().iter().any(|(_, a)| *a == ALARM_CORRUPT)
    }

    /// All active alarms as (member ID, alarm type).
    pub fn list(&self) -> Vec<(u64, i32)> {
        self.lock().clone()
    }

    /// Raises `alarm` for `member_id` (apply path). Returns whether it was newly raised.
    pub fn activate(&self, engine: &Engine, batch: &mut Batch, member_id: u64, alarm: i32) -> bool {
        let mut active = self.lock();
        if active.contains(&(member_id, alarm)) {
            return false;
        }
        active.push((member_id, alarm));
        persist(engine, batch, &active);
        true
    }

    /// Clears `alarm` for `member_id` (0 = every member; alarm 0 = every type). Returns what was
    /// cleared.
    pub fn deactivate(
        &self,
        engine: &Engine,
        batch: &mut Batch,
        member_id: u64,
        alarm: i32,
    ) -> Vec<(u64, i32)> {
        let mut active = self.lock();
        let (cleared, kept): (Vec<_>, Vec<_>) = active
            .iter()
            .partition(|(m, a)| (member_id == 0 || *m == member_id) && (alarm == 0 || *a == alarm));
        *active = kept;
        persist(engine, batch, &active);
        cleared
    }
}

/// The alarms in a persisted list, as (member ID, alarm type).
pub fn decode(bytes: &[u8]) -> Result<Vec<(u64, i32)>, prost::DecodeError> {
    Ok(AlarmList::decode(bytes)?
        .alarms
        .into_iter()
        .map(|a| (a.member_id, a.alarm))
        .collect())
}

fn persist(engine: &Engine, batch: &mut Batch, active: &[(u64, i32)]) {
    let list = AlarmList {
        alarms: active
            .iter()
            .map(|(member_id, alarm)| AlarmRecord {
                member_id: *member_id,
                alarm: *alarm,
            })
            .collect(),
    };
    batch.put(engine, Cf::Meta, KEY_ALARMS, &list.encode_to_vec());
}

/// Properties of the persisted alarm list (256 cases each, milliseconds in release).
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn alarm_lists_round_trip(alarms in proptest::collection::vec((any::<u64>(), any::<i32>()), 0..8)) {
            let list = AlarmList {
                alarms: alarms
                    .iter()
                    .map(|(member_id, alarm)| AlarmRecord { member_id: *member_id, alarm: *alarm })
                    .collect(),
            };
            prop_assert_eq!(decode(&list.encode_to_vec()).unwrap(), alarms);
        }

        #[test]
        fn random_bytes_decode_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&bytes);
        }
    }
}
