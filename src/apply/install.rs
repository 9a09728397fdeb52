//! Installing a raft snapshot from the leader into this member's live engine: the state
//! machine's column families are replaced by the file's records in bounded batches, keeping this
//! member's own ID; the install is recorded first and cleared by the last (synced) batch, so a
//! crash in the middle is finished at the next start ([`finish_interrupted_install`]).

use std::path::{Path, PathBuf};

use crate::consistent_index;
use crate::snapshot::format::{self, SnapshotError, SnapshotPosition};
use crate::storage::{Batch, Cf, Engine};

/// Bytes written to RocksDB per batch while installing (the last batch is the synced one).
const INSTALL_BATCH_BYTES: usize = 4 << 20;

/// Meta key naming the raft snapshot file being installed; present only while an install is
/// under way, so a member that crashed in the middle finishes it when it starts again.
const KEY_INSTALLING: &[u8] = b"installing_snapshot";

/// Replaces this member's state machine (column families `kv`, `lease`, `meta`) with the raft
/// snapshot in `file`, taken at `expected`, keeping this member's own ID. Written in bounded
/// batches; the install is recorded first and cleared by the last (synced) batch, see
/// [`finish_interrupted_install`].
pub fn install_into(
    engine: &Engine,
    file: &Path,
    expected: SnapshotPosition,
) -> Result<(), SnapshotError> {
    install_reporting(engine, file, expected, &mut || {})
}

/// [`install_into`] of a snapshot raft placed at (`index`, `term`).
pub fn install_at(
    engine: &Engine,
    file: &Path,
    index: u64,
    term: u64,
) -> Result<(), SnapshotError> {
    install_into(engine, file, SnapshotPosition { index, term })
}

/// [`install_into`], calling `progress` after each batch it writes (the apply thread tells the
/// liveness check it is moving).
pub fn install_reporting(
    engine: &Engine,
    file: &Path,
    expected: SnapshotPosition,
    progress: &mut dyn FnMut(),
) -> Result<(), SnapshotError> {
    failpoint!("snapshot_install");
    let member_id = engine.get(Cf::Meta, b"member_id")?;
    let mut batch = Batch::new();
    batch.put(
        engine,
        Cf::Meta,
        KEY_INSTALLING,
        file.to_string_lossy().as_bytes(),
    );
    engine.write(batch, true)?;

    let mut reader = format::read_file(file)?;
    let mut batch = Batch::new();
    // Every key of these column families sorts below 64 bytes of 0xff: revisions and lease
    // IDs are non-negative big-endian integers, meta keys are ASCII.
    let end = [0xffu8; 64];
    for cf in format::COLUMN_FAMILIES {
        batch.delete_range(engine, cf, &[], &end);
    }
    batch.put(
        engine,
        Cf::Meta,
        KEY_INSTALLING,
        file.to_string_lossy().as_bytes(),
    );
    if let Some(id) = &member_id {
        batch.put(engine, Cf::Meta, b"member_id", id);
    }
    while let Some(record) = reader.next_record()? {
        if record.cf == Cf::Meta
            && [&b"member_id"[..], consistent_index::KEY, KEY_INSTALLING]
                .contains(&record.key.as_slice())
        {
            continue;
        }
        batch.put(engine, record.cf, &record.key, &record.value);
        if batch.size_bytes() >= INSTALL_BATCH_BYTES {
            engine.write(std::mem::take(&mut batch), false)?;
            progress();
        }
    }
    let pos = reader.finish()?;
    if pos != expected {
        return Err(SnapshotError::Corrupt(format!(
            "snapshot file {} holds index {} term {}, raft expected index {} term {}",
            file.display(),
            pos.index,
            pos.term,
            expected.index,
            expected.term
        )));
    }
    consistent_index::write(engine, &mut batch, pos.index, pos.term);
    batch.delete(engine, Cf::Meta, KEY_INSTALLING);
    engine.write(batch, true)?;
    Ok(())
}

/// Finishes a raft snapshot install that a crash interrupted (the file is kept until the
/// install completed). Returns whether there was one.
pub fn finish_interrupted_install(engine: &Engine) -> Result<bool, SnapshotError> {
    let Some(name) = engine.get(Cf::Meta, KEY_INSTALLING)? else {
        return Ok(false);
    };
    let file = PathBuf::from(String::from_utf8_lossy(&name).into_owned());
    tracing::warn!(file = %file.display(), "finishing a snapshot install interrupted by a crash");
    let pos = format::verify_file(&file)?;
    install_into(engine, &file, pos)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::format::{all_records as all, sample_engine, save_to_file};

    #[test]
    fn install_replaces_the_state_and_keeps_the_member_id() {
        let src = tempfile::tempdir().unwrap();
        let leader = sample_engine(&src.path().join("leader"));
        let file = src.path().join("snap");
        let pos = save_to_file(&leader, &file).unwrap();

        let follower = Engine::open(&src.path().join("follower"), true).unwrap();
        let mut b = Batch::new();
        b.put(&follower, Cf::Kv, b"stale", b"x");
        b.put(&follower, Cf::Meta, b"member_id", &7u64.to_be_bytes());
        follower.write(b, true).unwrap();

        install_into(&follower, &file, pos).unwrap();
        assert_eq!(all(&follower, Cf::Kv), all(&leader, Cf::Kv));
        assert_eq!(all(&follower, Cf::Lease), all(&leader, Cf::Lease));
        assert_eq!(
            follower.get(Cf::Meta, b"member_id").unwrap(),
            Some(7u64.to_be_bytes().to_vec())
        );
        assert_eq!(consistent_index::read_index(&follower).unwrap(), 42);
        assert_eq!(follower.get(Cf::Meta, KEY_INSTALLING).unwrap(), None);
        assert!(!finish_interrupted_install(&follower).unwrap());

        let elsewhere = SnapshotPosition { index: 43, term: 3 };
        assert!(matches!(
            install_into(&follower, &file, elsewhere),
            Err(SnapshotError::Corrupt(_))
        ));
        // The failed install stays recorded and is finished at the next start.
        assert!(finish_interrupted_install(&follower).unwrap());
        assert_eq!(follower.get(Cf::Meta, KEY_INSTALLING).unwrap(), None);
    }
}
