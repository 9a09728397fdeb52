#!/usr/bin/env bash
# Builds a signed apt repository and an rpm repository from packages packaging/build.sh made.
#
#   packaging/repo.sh PACKAGE_DIR OUT_DIR KEY_ID
#
# PACKAGE_DIR: every oxetcd_*.deb and oxetcd-*.rpm in it goes in (several versions may sit side
# by side; apt and dnf pick the newest). OUT_DIR gets (made afresh):
#
#   apt/  dists/stable/{Release,InRelease,Release.gpg}, dists/stable/main/binary-amd64/Packages{,.gz},
#         pool/main/o/oxetcd/*.deb, oxetcd-archive-keyring.gpg (the public key, binary, for
#         signed-by=)
#   rpm/  *.rpm, repodata/ (createrepo_c), repodata/repomd.xml.asc (detached signature),
#         RPM-GPG-KEY-oxetcd (the public key, armored)
#
# KEY_ID names a secret key in gpg's keyring ($GNUPGHOME) without a passphrase, or one that
# gpg-agent already holds. Serve OUT_DIR with any static web server; README "Package
# repository" says how to publish and consume it. Needs apt-ftparchive (apt-utils), gpg and
# createrepo_c.
set -euo pipefail

[ $# -eq 3 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
pkgdir=$1 out=$2 key=$3
suite=stable component=main arch=amd64

shopt -s nullglob
debs=("$pkgdir"/oxetcd_*.deb)
rpms=("$pkgdir"/oxetcd-*.rpm)
[ ${#debs[@]} -gt 0 ] || { echo "no oxetcd_*.deb in $pkgdir" >&2; exit 1; }
[ ${#rpms[@]} -gt 0 ] || { echo "no oxetcd-*.rpm in $pkgdir" >&2; exit 1; }
gpg --batch --list-secret-keys "$key" >/dev/null || { echo "no secret key $key" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out"

echo "== apt repository (suite $suite, component $component)"
apt=$out/apt
pool=$apt/pool/$component/o/oxetcd
bin=$apt/dists/$suite/$component/binary-$arch
mkdir -p "$pool" "$bin"
cp "${debs[@]}" "$pool/"
# Paths in Packages are relative to the repository root, as apt expects.
(cd "$apt" && apt-ftparchive packages "pool/$component" > "dists/$suite/$component/binary-$arch/Packages")
gzip -9 -n -k "$bin/Packages"
apt-ftparchive \
    -o "APT::FTPArchive::Release::Origin=oxetcd" \
    -o "APT::FTPArchive::Release::Label=oxetcd" \
    -o "APT::FTPArchive::Release::Suite=$suite" \
    -o "APT::FTPArchive::Release::Codename=$suite" \
    -o "APT::FTPArchive::Release::Architectures=$arch" \
    -o "APT::FTPArchive::Release::Components=$component" \
    -o "APT::FTPArchive::Release::Description=oxetcd packages" \
    release "$apt/dists/$suite" > "$out/Release.tmp"
mv "$out/Release.tmp" "$apt/dists/$suite/Release"
gpg --batch --yes --local-user "$key" --clearsign \
    -o "$apt/dists/$suite/InRelease" "$apt/dists/$suite/Release"
gpg --batch --yes --local-user "$key" --armor --detach-sign \
    -o "$apt/dists/$suite/Release.gpg" "$apt/dists/$suite/Release"
gpg --batch --yes --export "$key" > "$apt/oxetcd-archive-keyring.gpg"

echo "== rpm repository"
rpmdir=$out/rpm
mkdir -p "$rpmdir"
cp "${rpms[@]}" "$rpmdir/"
createrepo_c --quiet "$rpmdir"
gpg --batch --yes --local-user "$key" --armor --detach-sign \
    -o "$rpmdir/repodata/repomd.xml.asc" "$rpmdir/repodata/repomd.xml"
gpg --batch --yes --armor --export "$key" > "$rpmdir/RPM-GPG-KEY-oxetcd"

echo "== repositories in $out"
find "$out" -type f | sort
