//! Build script: compiles every `.proto` under `proto/` into Rust (prost messages, tonic clients and servers).

use std::io;
use std::path::{Path, PathBuf};

/// Root of the proto tree; also the sole include path, so imports read `mvccpb/kv.proto`.
const PROTO_ROOT: &str = "proto";

fn main() -> io::Result<()> {
    // A directory here makes cargo rerun the script when any file below it changes, is added or
    // is removed, so a new proto needs no edit to this script.
    println!("cargo:rerun-if-changed={PROTO_ROOT}");

    let mut protos = Vec::new();
    collect_protos(Path::new(PROTO_ROOT), &mut protos)?;
    // Directory order is unspecified; sort so protoc sees the same command line on every machine.
    protos.sort();
    if protos.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no .proto files found under {PROTO_ROOT}/"),
        ));
    }

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&protos, &[PathBuf::from(PROTO_ROOT)])
}

/// Appends every `.proto` file below `dir` to `out`, descending into subdirectories.
fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
