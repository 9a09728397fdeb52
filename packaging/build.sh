#!/usr/bin/env bash
# Builds the .deb and the .rpm from an existing release build.
#
#   packaging/build.sh [OUTDIR]      (default: $CARGO_TARGET_DIR/packages, or target/packages)
#
# Needs `cargo build --release` first. Installs the pinned cargo-deb and cargo-generate-rpm
# into $OXETCD_TOOLS (default ~/.cache/oxetcd/tools) when they are missing there, so a machine
# builds them once. The release profile keeps line tables (hundreds of MB): `cargo deb --strip`
# strips its copy; cargo-generate-rpm neither builds nor strips, so it packages a stripped copy
# of the binary from a staging directory.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

target_dir=${CARGO_TARGET_DIR:-target}
out=${1:-$target_dir/packages}
tools=${OXETCD_TOOLS:-$HOME/.cache/oxetcd/tools}
binary=$target_dir/release/oxetcd
[ -x "$binary" ] || { echo "no release build at $binary: run cargo build --release" >&2; exit 1; }
# A binary built with `--features failpoints` (as CI's tests build it) must never be packaged:
# only the build without it carries this warning text (src/main.rs).
if ! grep -q "built without failpoints" "$binary"; then
    echo "$binary was built with --features failpoints: run cargo build --release" >&2
    exit 1
fi

# Tools: pinned versions, built in their own target directory so they never touch ours.
tool_version() { "$tools/bin/$1" "${1#cargo-}" --version 2>/dev/null | awk '{print $2}'; }
install_tool() {
    local name=$1 version=$2
    if [ "$(tool_version "$name")" != "$version" ]; then
        echo "installing $name $version into $tools"
        CARGO_TARGET_DIR="$tools/build" cargo install --quiet --locked --root "$tools" \
            "$name@$version"
    fi
}
install_tool cargo-deb "$CARGO_DEB_VERSION"
install_tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"
export PATH="$tools/bin:$PATH"

rm -rf "$out"
mkdir -p "$out"

echo "== cargo deb"
cargo deb --no-build --strip --output "$out"

echo "== cargo generate-rpm"
stage=$target_dir/rpm-stage
rm -rf "$stage"
mkdir -p "$stage/release"
strip --strip-unneeded -o "$stage/release/oxetcd" "$binary"
# --target-dir makes the asset `target/release/oxetcd` resolve to the stripped copy.
cargo generate-rpm --target-dir "$stage" --output "$out"
rm -rf "$stage"

echo "== packages"
ls -l "$out"
