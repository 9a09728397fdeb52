//! The state machine as raft's [`SnapshotSource`]: one RocksDB view of the applied state, its
//! position (meta `consistent_index`) and its raft configuration (the member list), written in
//! the snapshot [`format`](super::format).

use std::io::Write;
use std::sync::Arc;

use raft::eraftpb::ConfState;

use super::format::{self, SnapshotError, SnapshotPosition};
use crate::membership;
use crate::raft::snapshots::{SnapshotSource, SnapshotView, SourceError};
use crate::storage::{Cf, Engine, View};

/// Raft snapshots of the state machine in `engine`.
pub struct StateMachineSnapshots {
    engine: Arc<Engine>,
}

impl StateMachineSnapshots {
    pub fn new(engine: Arc<Engine>) -> StateMachineSnapshots {
        StateMachineSnapshots { engine }
    }
}

impl SnapshotSource for StateMachineSnapshots {
    fn capture(&self) -> Result<Box<dyn SnapshotView + '_>, SourceError> {
        let view = self.engine.view();
        let position = format::position(&view)?;
        let conf_state = conf_state_of(&view)?;
        Ok(Box::new(AppliedView {
            view,
            position,
            conf_state,
        }))
    }
}

/// One view of the applied state with the position and configuration read from it.
struct AppliedView<'a> {
    view: View<'a>,
    position: SnapshotPosition,
    conf_state: ConfState,
}

impl SnapshotView for AppliedView<'_> {
    fn position(&self) -> (u64, u64) {
        (self.position.index, self.position.term)
    }

    fn conf_state(&self) -> ConfState {
        self.conf_state.clone()
    }

    fn write_to(&self, out: &mut dyn Write) -> Result<(), SourceError> {
        format::write_snapshot(&self.view, out)?;
        Ok(())
    }
}

/// The voters and learners recorded in a view's member list (the configuration raft had at the
/// view's applied index).
fn conf_state_of(view: &View<'_>) -> Result<ConfState, SnapshotError> {
    let members = match view.get(Cf::Meta, membership::KEY_MEMBERS)? {
        Some(bytes) => membership::decode_members(&bytes)
            .map_err(|e| SnapshotError::Corrupt(format!("member list: {e}")))?,
        None => Vec::new(),
    };
    Ok(membership::conf_state_from(&members))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Batch;

    #[test]
    fn captures_position_configuration_and_the_snapshot_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = format::sample_engine(dir.path());
        let members = membership::voter_1_learner_2();
        let mut batch = Batch::new();
        batch.put(
            &engine,
            Cf::Meta,
            membership::KEY_MEMBERS,
            &membership::encode_members(members),
        );
        engine.write(batch, false).unwrap();

        let source = StateMachineSnapshots::new(engine.clone());
        let view = source.capture().unwrap();
        assert_eq!(view.position(), (42, 3));
        assert_eq!(view.conf_state().voters, vec![1]);
        assert_eq!(view.conf_state().learners, vec![2]);
        let mut written = Vec::new();
        view.write_to(&mut written).unwrap();
        let mut expected = Vec::new();
        format::write_snapshot(&engine.view(), &mut expected).unwrap();
        assert_eq!(written, expected);
    }
}
