//! A slog drain that forwards raft-rs's log records to `tracing`, keeping their key-values.

use std::fmt::Write as _;

use slog::{Drain, KV, OwnedKVList, Record};

/// Forwards slog records to tracing events with target `raft`.
pub struct TracingDrain;

struct Collect(String);

impl slog::Serializer for Collect {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = write!(self.0, "{key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut kv = Collect(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", fields = %kv.0, "{msg}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", fields = %kv.0, "{msg}"),
            slog::Level::Info => tracing::info!(target: "raft", fields = %kv.0, "{msg}"),
            // raft's debug records are per-message chatter.
            slog::Level::Debug | slog::Level::Trace => {
                tracing::trace!(target: "raft", fields = %kv.0, "{msg}")
            }
        }
        Ok(())
    }
}

/// The logger handed to `RawNode::new`.
pub fn logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}
