#!/usr/bin/env bash
# How long a follower's raft thread stalls while it installs a large snapshot from its leader.
# A manual benchmark: CI does not run it.
#
# Usage: tests/bench/snapshot-install-stall.sh [OXETCD_BIN]   (default target/release/oxetcd)
#
# Starts a 3-member loopback cluster (--snapshot-count 100, debug logs), stops one follower,
# writes SNAPSHOT_MB megabytes (default 500) as 100 KB values through the leader, so the
# leader's log no longer reaches back to the follower, and starts the follower again: it
# receives and installs one snapshot of that size. Prints from the follower's log when the
# snapshot arrived, how long its install took, and each new longest raft-thread step (logged
# when a step is the longest yet: "longest raft thread step so far" at debug level, "raft thread
# step took long" as a warning over 500 ms). A binary older than these lines prints none; its
# raft thread waited for the whole install.
#
# Env: PUT_BENCH  load generator (default: examples/put_bench, built with cargo --release)
#      BENCH_DIR  where the throwaway data dirs go (default $TMPDIR or /tmp)
set -euo pipefail

bin="$(realpath "${1:-target/release/oxetcd}")"
put_bench="${PUT_BENCH:-}"
if [ -z "$put_bench" ]; then
  cargo build --quiet --release --example put_bench
  put_bench="${CARGO_TARGET_DIR:-target}/release/examples/put_bench"
fi
mb="${SNAPSHOT_MB:-500}"
value_bytes=102400
puts=$(( mb * 1024 * 1024 / value_bytes ))
# The leader keeps 5,000 entries behind its applied index; write past that whatever the size.
[ "$puts" -gt 5300 ] || puts=5300
work="$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/oxetcd-stall.XXXXXX")"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

cluster="m0=http://127.0.0.1:24800,m1=http://127.0.0.1:24801,m2=http://127.0.0.1:24802"
start() {
  local i=$1
  "$bin" --name "m$i" --data-dir "$work/m$i" \
    --listen-client-urls "http://127.0.0.1:2479$i" --advertise-client-urls "http://127.0.0.1:2479$i" \
    --listen-peer-urls "http://127.0.0.1:2480$i" --initial-advertise-peer-urls "http://127.0.0.1:2480$i" \
    --initial-cluster "$cluster" --initial-cluster-state new \
    --snapshot-count 100 --quota-backend-bytes 8589934592 \
    --log-outputs "$work/m$i.log" --log-level debug &
  pids[$i]=$!
}
healthy() {
  for _ in $(seq 600); do
    if ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:2479$1" endpoint health >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "member m$1 never became healthy" >&2
  exit 1
}
for i in 0 1 2; do start "$i"; done
for i in 0 1 2; do healthy "$i"; done
leader=""
for i in 0 1 2; do
  if ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:2479$i" endpoint status -w json \
    | python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; sys.exit(0 if s["header"]["member_id"]==s["leader"] else 1)'; then
    leader=$i
  fi
done
follower=$(( (leader + 1) % 3 ))
kill -TERM "${pids[$follower]}"
wait "${pids[$follower]}" || true
echo "leader m$leader; follower m$follower stopped; writing $puts puts of $value_bytes bytes"
"$put_bench" "http://127.0.0.1:2479$leader" 8 "$puts" 16 "$value_bytes" --max-seconds 600 | grep -E 'puts/s|ok|errors' || true
restarted=$(date +%s.%N)
start "$follower"
healthy "$follower"
target=$(ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:2479$leader" endpoint status -w json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')
for _ in $(seq 3000); do
  rev=$(ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:2479$follower" endpoint status -w json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')
  [ "$rev" -ge "$target" ] && break
  sleep 0.1
done
echo "follower at revision $rev (leader $target) $(python3 -c "import time; print(round(time.time()-$restarted, 1))") s after restart"
du -sh "$work/m$follower/snap" 2>/dev/null || true
grep -E 'received a snapshot|installed a snapshot|raft thread step took long|longest raft thread step' "$work/m$follower.log" \
  | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        r = json.loads(line)
    except ValueError:
        print(line.rstrip()); continue
    print(r.get("timestamp"), r.get("message"), {k: v for k, v in r.items() if k in ("took", "bytes", "index", "revision")})
'
