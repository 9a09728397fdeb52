//! Build script: compiles every `.proto` under `proto/` into Rust (prost messages, tonic clients and
//! servers), and generates serde impls for etcd's client-facing messages (the JSON gateway).

use std::io;
use std::path::{Path, PathBuf};

/// Root of the proto tree; also the sole include path, so imports read `mvccpb/kv.proto`.
const PROTO_ROOT: &str = "proto";

/// The proto packages the JSON gateway serves, which get serde impls.
const JSON_PACKAGES: [&str; 5] = [
    ".etcdserverpb",
    ".mvccpb",
    ".authpb",
    ".v3electionpb",
    ".v3lockpb",
];

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

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "cargo sets OUT_DIR for build scripts",
        )
    })?);
    let descriptors_path = out_dir.join("descriptors.bin");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(&descriptors_path)
        .compile_protos(&protos, &[PathBuf::from(PROTO_ROOT)])?;

    // The JSON mapping etcd's grpc-gateway writes: proto field names as declared (`cluster_id`,
    // `dbSize`), 64-bit integers as strings, bytes as base64, enums by name, default values left
    // out; unknown request fields are ignored, as etcd does.
    let descriptors = std::fs::read(&descriptors_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&JSON_PACKAGES)
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
