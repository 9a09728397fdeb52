#!/usr/bin/env bash
# Put throughput of oxetcd against etcd 3.4, with 1 and 64 concurrent clients (256-byte values).
# A manual benchmark: CI does not run it.
#
# Usage:
#   tests/bench/put-throughput.sh [[LABEL=]OXETCD_BIN ...]
#                                                  start etcd 3.4, then each oxetcd binary, one
#                                                  at a time on loopback ports; print one
#                                                  comparison table (before/after builds of
#                                                  oxetcd in one run: before=/tmp/a after=/tmp/b)
#   tests/bench/put-throughput.sh --etcd-only       measure etcd 3.4 alone
#   tests/bench/put-throughput.sh --endpoint URL    measure a server that is already running here
#
# Env: PUT_BENCH   load generator (default: examples/put_bench, built with cargo --release)
#      ETCD        etcd binary (default /usr/bin/etcd)
#      REQUESTS_1  puts in the 1-client run (default 2000)
#      REQUESTS_64 puts in the 64-client run (default 20000)
#      MAX_SECONDS upper bound on each run (default 60)
#      MEMBERS     members per server under test (default 1); with 3 or 5 each server is a
#                  loopback cluster and the load goes to its leader
#      BENCH_DIR   where the throwaway data dirs go (default $TMPDIR or /tmp; put it on the disk
#                  you care about: fsync cost dominates single-client latency)
# Besides puts/s and latency, each run reports the servers' CPU time per put (user+sys from
# /proc/PID/stat, summed over the members): on two cores the load generator takes about one, so
# throughput alone hides how much of the machine the server needs.
# Only loopback endpoints are accepted; started servers are stopped and their data removed on exit.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ETCD=${ETCD:-/usr/bin/etcd}
REQUESTS_1=${REQUESTS_1:-2000}
REQUESTS_64=${REQUESTS_64:-20000}
MAX_SECONDS=${MAX_SECONDS:-60}
WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/put-throughput.XXXXXX")
MEMBERS=${MEMBERS:-1}
SERVER_PIDS=()

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_server() {
    local i pid
    for pid in "${SERVER_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${SERVER_PIDS[@]}"; do
        for i in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    SERVER_PIDS=()
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A free port below the kernel's ephemeral range.
pick_port() {
    local port tries
    for tries in $(seq 200); do
        port=$((20000 + RANDOM % 12000))
        if ! port_busy "$port" && [[ " ${TAKEN:-} " != *" $port "* ]]; then
            TAKEN="${TAKEN:-} $port"
            echo "$port"
            return 0
        fi
    done
    die "no free port"
}

healthy() {
    local response
    response=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" &&
        printf 'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3 &&
        timeout 2 cat <&3) 2>/dev/null) || return 1
    [[ $response == *'"health":"true"'* ]]
}

# start_server LABEL BIN: one single-member server on fresh loopback ports and data dir; sets EP.
start_server() {
    local label=$1 bin=$2 cport pport i pid
    cport=$(pick_port)
    pport=$(pick_port)
    EP="http://127.0.0.1:$cport"
    local peer="http://127.0.0.1:$pport"
    "$bin" --name bench --data-dir "$WORK/$label.data" \
        --listen-client-urls "$EP" --advertise-client-urls "$EP" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "bench=$peer" >"$WORK/$label.log" 2>&1 &
    pid=$!
    SERVER_PIDS+=("$pid")
    for i in $(seq 300); do
        if healthy "$cport"; then
            log "$label ready on $EP (data dir $WORK/$label.data)"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { tail -50 "$WORK/$label.log" >&2; die "$label exited"; }
        sleep 0.1
    done
    tail -50 "$WORK/$label.log" >&2
    die "$label not healthy within 30 s"
}

# start_cluster LABEL BIN: MEMBERS members on fresh loopback ports; sets EP to the leader's
# client URL once every member is healthy.
start_cluster() {
    local label=$1 bin=$2 i cports=() pports=() initial="" endpoints=""
    for i in $(seq "$MEMBERS"); do
        cports+=("$(pick_port)")
        pports+=("$(pick_port)")
        initial+="${initial:+,}m$i=http://127.0.0.1:${pports[-1]}"
        endpoints+="${endpoints:+,}http://127.0.0.1:${cports[-1]}"
    done
    for i in $(seq "$MEMBERS"); do
        local c="http://127.0.0.1:${cports[$((i - 1))]}" p="http://127.0.0.1:${pports[$((i - 1))]}"
        "$bin" --name "m$i" --data-dir "$WORK/$label.m$i.data" \
            --listen-client-urls "$c" --advertise-client-urls "$c" \
            --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
            --initial-cluster "$initial" --initial-cluster-state new \
            --initial-cluster-token "bench-$label" >"$WORK/$label.m$i.log" 2>&1 &
        SERVER_PIDS+=($!)
    done
    for i in $(seq 300); do
        local all=1 port
        for port in "${cports[@]}"; do
            healthy "$port" || all=0
        done
        if [[ $all == 1 ]]; then
            # The leader: the member whose status names itself as leader.
            EP=$(ETCDCTL_API=3 etcdctl --endpoints="$endpoints" endpoint status -w fields 2>/dev/null |
                awk -F' : ' '/"MemberID"/ {id = $2} /"Leader"/ {lead = ($2 == id)} /"Endpoint"/ {if (lead) print $2}' |
                tr -d '"' | head -1)
            if [[ -n $EP ]]; then
                log "$label: $MEMBERS members ready; leader $EP"
                return 0
            fi
        fi
        sleep 0.1
    done
    tail -50 "$WORK/$label.m1.log" >&2
    die "$label cluster not healthy within 30 s"
}

# start LABEL BIN: one server or one cluster, per MEMBERS.
start() {
    if [[ $MEMBERS == 1 ]]; then
        start_server "$1" "$2"
    else
        start_cluster "$1" "$2"
    fi
}

# The started servers' user+sys CPU time so far, in clock ticks.
server_ticks() {
    local pid total=0 stat
    for pid in "${SERVER_PIDS[@]}"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        # Fields after the ")" closing the command name: utime and stime are the 12th and 13th.
        stat=${stat##*) }
        total=$((total + $(awk '{print $12 + $13}' <<<"$stat")))
    done
    echo "$total"
}

# bench ENDPOINT CLIENTS REQUESTS: prints "puts/s p50_ms p99_ms completed errors".
bench() {
    local out
    out=$("$PUT_BENCH" "$1" "$2" "$3" 16 256 --max-seconds "$MAX_SECONDS") \
        || die "put_bench failed against $1 with $2 clients"
    awk '$1 == "puts/s" {t = $2} $1 == "p50_ms" {p50 = $2} $1 == "p99_ms" {p99 = $2}
         $1 == "completed" {c = $2} $1 == "errors" {e = $2}
         END {print t, p50, p99, c, e}' <<<"$out"
}

# measure LABEL ENDPOINT: runs 1 and 64 clients, stores "puts/s p50_ms p99_ms completed errors
# cpu_us_per_put" in RESULT_<label>_<clients> (cpu "-" when the server is not ours to read).
measure() {
    local label=$1 endpoint=$2 clients requests result before cpu
    for clients in 1 64; do
        requests=$REQUESTS_1
        [[ $clients == 1 ]] || requests=$REQUESTS_64
        log "$label: $clients client(s), $requests puts"
        before=$(server_ticks)
        result=$(bench "$endpoint" "$clients" "$requests")
        cpu=$(awk -v t="$(($(server_ticks) - before))" -v hz="$(getconf CLK_TCK)" -v n="$(field "$result" 4)" \
            -v any="${#SERVER_PIDS[@]}" 'BEGIN { if (any > 0 && n > 0) printf "%.0f", t * 1e6 / hz / n; else print "-" }')
        result="$result $cpu"
        printf -v "RESULT_${label//[^A-Za-z0-9_]/_}_${clients}" '%s' "$result"
        log "$label: $clients client(s): $result (puts/s p50_ms p99_ms completed errors cpu_us/put)"
    done
}

# result LABEL CLIENTS: what measure stored.
result() {
    local var="RESULT_${1//[^A-Za-z0-9_]/_}_$2"
    echo "${!var}"
}

field() { awk -v n="$2" '{print $n}' <<<"$1"; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }

MODE=compare
SERVERS=()
case "${1:-}" in
    --endpoint)
        MODE=endpoint
        ENDPOINT=${2:?--endpoint needs a URL}
        [[ $ENDPOINT =~ ^http://(127\.[0-9]+\.[0-9]+\.[0-9]+|localhost|\[::1\]):[0-9]+$ ]] \
            || die "only loopback endpoints (http://127.x.x.x:PORT, localhost, [::1]) are allowed"
        ;;
    --etcd-only) MODE=etcd ;;
    -h | --help) sed -n '2,28p' "$0"; exit 0 ;;
    "") SERVERS=("oxetcd=$TARGET_DIR/release/oxetcd") ;;
    *)
        for arg in "$@"; do
            if [[ $arg == *=* ]]; then SERVERS+=("$arg"); else SERVERS+=("oxetcd=$arg"); fi
        done
        ;;
esac

if [[ -z ${PUT_BENCH:-} ]]; then
    PUT_BENCH=$TARGET_DIR/release/examples/put_bench
    log "building examples/put_bench (cargo build --release --example put_bench)"
    (cd "$ROOT" && cargo build --release --example put_bench) >&2
fi
[[ -x $PUT_BENCH ]] || die "load generator $PUT_BENCH not found"
log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

if [[ $MODE == endpoint ]]; then
    measure target "$ENDPOINT"
    printf '\n| clients | puts/s | p50 ms | p99 ms |\n|---|---|---|---|\n'
    for clients in 1 64; do
        r=$(result target "$clients")
        printf '| %s | %s | %s | %s |\n' "$clients" "$(field "$r" 1)" "$(field "$r" 2)" "$(field "$r" 3)"
    done
    exit 0
fi

[[ -x $ETCD ]] || die "$ETCD not found (apt-get install etcd-server)"
start etcd "$ETCD"
measure etcd "$EP"
stop_server
LABELS=(etcd)

for server in "${SERVERS[@]}"; do
    label=${server%%=*}
    bin=${server#*=}
    [[ -x $bin ]] || die "oxetcd binary $bin not found (cargo build --release, or pass its path)"
    start "$label" "$bin"
    measure "$label" "$EP"
    stop_server
    LABELS+=("$label")
done

printf '\n| server | clients | puts/s | vs etcd | p50 / p99 ms | server CPU us/put |\n'
printf '|---|---|---|---|---|---|\n'
for clients in 1 64; do
    etcd_result=$(result etcd "$clients")
    for label in "${LABELS[@]}"; do
        r=$(result "$label" "$clients")
        printf '| %s | %s | %s | %s | %s / %s | %s |\n' "$label" "$clients" "$(field "$r" 1)" \
            "$(ratio "$(field "$r" 1)" "$(field "$etcd_result" 1)")" \
            "$(field "$r" 2)" "$(field "$r" 3)" "$(field "$r" 6)"
    done
done
