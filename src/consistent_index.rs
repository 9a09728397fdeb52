//! The consistent index: the raft position (index, term) of the last entry applied to the state
//! machine, persisted in meta `consistent_index` in the same batch as the state it describes.
//!
//! The one owner of that key and its encoding (index u64 | term u64, big-endian): apply writes
//! it with every entry, the snapshot format reads it from the view it streams, a raft snapshot
//! install and `oxetcd snapshot restore` write the snapshot's position.

use crate::storage::{Batch, Cf, Engine, StorageError, View};

/// The meta key holding the applied position.
pub const KEY: &[u8] = b"consistent_index";

/// The persisted form of (`index`, `term`).
pub fn encode(index: u64, term: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&index.to_be_bytes());
    bytes[8..].copy_from_slice(&term.to_be_bytes());
    bytes
}

/// (index, term) from their persisted form.
pub fn decode(bytes: &[u8]) -> Result<(u64, u64), StorageError> {
    let bytes: &[u8; 16] = bytes.try_into().map_err(|_| StorageError::Corrupt {
        cf: Cf::Meta.name(),
        key: KEY.to_vec(),
        reason: "consistent index is not 16 bytes".into(),
    })?;
    let index = u64::from_be_bytes(bytes[..8].try_into().expect("16-byte array"));
    let term = u64::from_be_bytes(bytes[8..].try_into().expect("16-byte array"));
    Ok((index, term))
}

/// The index of the last entry applied to the state machine, as persisted (0 before the first
/// apply).
pub fn read_index(engine: &Engine) -> Result<u64, StorageError> {
    match engine.get(Cf::Meta, KEY)? {
        None => Ok(0),
        Some(bytes) => Ok(decode(&bytes)?.0),
    }
}

/// The applied (index, term) as of `view` ((0, 0) before the first apply).
pub fn read_position(view: &View<'_>) -> Result<(u64, u64), StorageError> {
    match view.get(Cf::Meta, KEY)? {
        None => Ok((0, 0)),
        Some(bytes) => decode(&bytes),
    }
}

/// Adds the applied position (`index`, `term`) to `batch`.
pub fn write(engine: &Engine, batch: &mut Batch, index: u64, term: u64) {
    batch.put(engine, Cf::Meta, KEY, &encode(index, term));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_other_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), false).unwrap();
        assert_eq!(read_index(&engine).unwrap(), 0);
        assert_eq!(read_position(&engine.view()).unwrap(), (0, 0));
        let mut batch = Batch::new();
        write(&engine, &mut batch, 42, 3);
        engine.write(batch, false).unwrap();
        assert_eq!(read_index(&engine).unwrap(), 42);
        assert_eq!(read_position(&engine.view()).unwrap(), (42, 3));
        assert!(decode(&[0u8; 15]).is_err());
        assert!(decode(&[0u8; 17]).is_err());
    }
}

/// Properties of the consistent index encoding (256 cases each, milliseconds in release).
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trips(index: u64, term: u64) {
            prop_assert_eq!(decode(&encode(index, term)).unwrap(), (index, term));
        }

        #[test]
        fn only_16_bytes_decode(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            match decode(&bytes) {
                Ok((index, term)) => prop_assert_eq!(&encode(index, term)[..], &bytes[..]),
                Err(e) => {
                    prop_assert_ne!(bytes.len(), 16);
                    prop_assert!(e.to_string().contains("consistent"), "{}", e);
                }
            }
        }
    }
}
