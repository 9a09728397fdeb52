#!/bin/sh
# Static checks of the packaging pieces, for CI: generated files current, unit verifies cleanly
# and scores <= 2.0, scripts parse, logrotate config parses, sysusers/tmpfiles apply in a
# scratch root. Usage: packaging/check.sh [path/to/release/oxetcd]
set -eu
cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-target}/release/oxetcd}
bin=$(realpath "$bin")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

echo "== generated config and man page are current"
python3 packaging/generate.py --binary "$bin" --check

echo "== systemd-analyze verify (any output fails)"
# verify needs ExecStart's binary to exist; point it at the build, keep the unit's name.
sed "s#^ExecStart=/usr/bin/oxetcd #ExecStart=$bin #" systemd/oxetcd.service > "$scratch/oxetcd.service"
out=$(systemd-analyze verify --man=no "$scratch/oxetcd.service" 2>&1) || true
if [ -n "$out" ]; then echo "$out"; exit 1; fi

echo "== the backup service and timer verify cleanly; the generator's drop-in parses"
sed "s#^ExecStart=/usr/bin/oxetcd #ExecStart=$bin #" systemd/oxetcd-backup.service > "$scratch/oxetcd-backup.service"
cp systemd/oxetcd-backup.timer "$scratch/oxetcd-backup.timer"
mkdir -p "$scratch/oxetcd-backup.timer.d"
printf '[backup]\nschedule = "*-*-* 03:30:00"\n' > "$scratch/backup.toml"
"$bin" backup --timer-dropin --config-file "$scratch/backup.toml" > "$scratch/oxetcd-backup.timer.d/50-oxetcd-schedule.conf"
grep -qx 'OnCalendar=\*-\*-\* 03:30:00' "$scratch/oxetcd-backup.timer.d/50-oxetcd-schedule.conf"
out=$(systemd-analyze verify --man=no "$scratch/oxetcd-backup.service" "$scratch/oxetcd-backup.timer" 2>&1) || true
if [ -n "$out" ]; then echo "$out"; exit 1; fi
systemd-analyze calendar "*-*-* 03:30:00" >/dev/null
systemd-analyze security --offline=true --threshold=20 systemd/oxetcd-backup.service | tail -1
sh -n packaging/oxetcd-backup-generator

echo "== the unit restarts a member that failed (fatal: 1, panic: 101), not a misconfigured one (2)"
grep -qx 'Restart=on-failure' systemd/oxetcd.service
grep -qx 'RestartPreventExitStatus=2' systemd/oxetcd.service

echo "== systemd-analyze security (threshold 2.0)"
systemd-analyze security --offline=true --threshold=20 systemd/oxetcd.service | tail -1

echo "== maintainer scripts parse"
for f in packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm packaging/rpm/*.sh; do
    sh -n "$f"
done

echo "== logrotate config parses"
sed "s#/var/log/etcd.log#$scratch/etcd.log#; s/create 0640 oxetcd adm/create 0640 root root/" \
    packaging/logrotate > "$scratch/logrotate"
: > "$scratch/etcd.log"
logrotate -d -s "$scratch/state" "$scratch/logrotate" 2>&1 | grep -i error && exit 1

echo "== sysusers and tmpfiles apply in a scratch root"
root=$scratch/root
mkdir -p "$root/etc" "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d" "$root/var/lib" "$root/var/log"
cp /etc/passwd /etc/group /etc/shadow /etc/gshadow "$root/etc/"
cp packaging/oxetcd.sysusers "$root/usr/lib/sysusers.d/oxetcd.conf"
cp packaging/oxetcd.tmpfiles "$root/usr/lib/tmpfiles.d/oxetcd.conf"
systemd-sysusers --root="$root" oxetcd.conf
systemd-tmpfiles --root="$root" --create oxetcd.conf
test "$(stat -c %a "$root/var/lib/oxetcd")" = 700
test "$(stat -c %a "$root/var/log/etcd.log")" = 640
echo "all packaging checks passed"
