#!/usr/bin/env bash
# Put throughput of oxetcd against etcd 3.4, with 1 and 64 concurrent clients (256-byte values),
# in plain, TLS and auth configurations. A manual benchmark: CI does not run it.
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
#      SECURITY    comma-separated configurations to measure, each against every server, in one
#                  run (default plain):
#                    plain     http:// client URL, no auth
#                    tls       https:// client URL with mutual TLS, as kubeadm runs etcd:
#                              --cert-file --key-file --trusted-ca-file --client-cert-auth, a
#                              throwaway CA, server certificate (127.0.0.1) and client certificate
#                              made with openssl in the work dir; the load generator presents the
#                              client certificate
#                    auth      after start, etcdctl (ETCDCTL_API=3) adds root, a user `bench` whose
#                              role grants readwrite on the bench/ prefix, and enables auth
#                              (simple tokens, default bcrypt cost); the load generator runs as
#                              bench, so every put carries a token and passes a permission check
#                    tls+auth  both
#                  e.g. SECURITY=plain,tls,auth. etcd and oxetcd get identical flags and setup;
#                  peer URLs stay http:// (loopback). --endpoint measures plain http:// only.
# Besides puts/s and latency, each run reports the servers' CPU time per put (user+sys from
# /proc/PID/stat, summed over the members, read by put_bench when its clock starts and stops, so
# connecting, TLS handshakes and Authenticate's bcrypt are not counted): on two cores the load
# generator takes about one, so throughput alone hides how much of the machine the server needs.
# Each configuration gets its own table with every server's ratio to etcd 3.4 configured the same
# way; a closing table lists the 64-client ratios side by side.
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
SECURITY=${SECURITY:-plain}
SERVER_PIDS=()
# Set per configuration by use_security: the client URL scheme, the servers' TLS flags, the
# load generator's and etcdctl's TLS and user flags.
SCHEME=http
SERVER_TLS=()
CLIENT_TLS=()
CTL_TLS=()
BENCH_USER=()
AUTH=0
TLS_DIR=$WORK/tls
ROOT_PASSWORD=bench-root-password
BENCH_PASSWORD=bench-user-password

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
    if [[ $SCHEME == https ]]; then
        response=$(curl -sS --max-time 2 --cacert "$TLS_DIR/ca.crt" --cert "$TLS_DIR/client.crt" \
            --key "$TLS_DIR/client.key" "https://127.0.0.1:$1/health" 2>/dev/null) || return 1
    else
        response=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" &&
            printf 'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3 &&
            timeout 2 cat <&3) 2>/dev/null) || return 1
    fi
    [[ $response == *'"health":"true"'* ]]
}

# A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, in $TLS_DIR.
make_certs() {
    [[ -f $TLS_DIR/ca.crt ]] && return 0
    command -v openssl >/dev/null || die "openssl not found"
    mkdir -p "$TLS_DIR"
    (
        cd "$TLS_DIR"
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=put-throughput CA" \
            -keyout ca.key -out ca.crt
        openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' \
            >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile server.ext -out server.crt
        openssl req -newkey rsa:2048 -nodes -subj "/CN=put-throughput-client" \
            -keyout client.key -out client.csr
        printf 'extendedKeyUsage=clientAuth\n' >client.ext
        openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile client.ext -out client.crt
    ) >"$WORK/openssl.log" 2>&1 || { cat "$WORK/openssl.log" >&2; die "openssl failed"; }
    log "certificates in $TLS_DIR"
}

# use_security MODE: sets the flags above for plain, tls, auth or tls+auth.
use_security() {
    SCHEME=http SERVER_TLS=() CLIENT_TLS=() CTL_TLS=() BENCH_USER=() AUTH=0
    case $1 in
        plain) ;;
        tls | auth | tls+auth)
            if [[ $1 == *tls* ]]; then
                make_certs
                SCHEME=https
                SERVER_TLS=(--cert-file "$TLS_DIR/server.crt" --key-file "$TLS_DIR/server.key"
                    --trusted-ca-file "$TLS_DIR/ca.crt" --client-cert-auth)
                CLIENT_TLS=(--cacert "$TLS_DIR/ca.crt" --cert "$TLS_DIR/client.crt"
                    --key "$TLS_DIR/client.key")
                CTL_TLS=("${CLIENT_TLS[@]}")
            fi
            if [[ $1 == *auth* ]]; then
                AUTH=1
                BENCH_USER=(--user "bench:$BENCH_PASSWORD")
            fi
            ;;
        *) die "SECURITY: unknown configuration '$1' (plain, tls, auth, tls+auth)" ;;
    esac
}

ctl() { ETCDCTL_API=3 etcdctl --endpoints="$EP" "${CTL_TLS[@]}" "$@"; }

# enable_auth LABEL: root, a user bench with readwrite on bench/, then auth enable (on $EP).
enable_auth() {
    {
        ctl user add "root:$ROOT_PASSWORD" &&
            ctl role add root &&
            ctl user grant-role root root &&
            ctl user add "bench:$BENCH_PASSWORD" &&
            ctl role add bench &&
            ctl role grant-permission bench readwrite bench/ --prefix=true &&
            ctl user grant-role bench bench &&
            ctl auth enable
    } >>"$WORK/$1.auth.log" 2>&1 || { cat "$WORK/$1.auth.log" >&2; die "$1: enabling auth failed"; }
    log "$1: auth enabled; the load generator runs as bench"
}

# start_server LABEL BIN: one single-member server on fresh loopback ports and data dir; sets EP.
start_server() {
    local label=$1 bin=$2 cport pport i pid
    cport=$(pick_port)
    pport=$(pick_port)
    EP="$SCHEME://127.0.0.1:$cport"
    local peer="http://127.0.0.1:$pport"
    "$bin" --name bench --data-dir "$WORK/$label.data" "${SERVER_TLS[@]}" \
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
        endpoints+="${endpoints:+,}$SCHEME://127.0.0.1:${cports[-1]}"
    done
    for i in $(seq "$MEMBERS"); do
        local c="$SCHEME://127.0.0.1:${cports[$((i - 1))]}" p="http://127.0.0.1:${pports[$((i - 1))]}"
        "$bin" --name "m$i" --data-dir "$WORK/$label.m$i.data" "${SERVER_TLS[@]}" \
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
            EP=$(ETCDCTL_API=3 etcdctl --endpoints="$endpoints" "${CTL_TLS[@]}" endpoint status -w fields 2>/dev/null |
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

# start LABEL BIN: one server or one cluster, per MEMBERS, configured per use_security.
start() {
    if [[ $MEMBERS == 1 ]]; then
        start_server "$1" "$2"
    else
        start_cluster "$1" "$2"
    fi
    if [[ $AUTH == 1 ]]; then
        enable_auth "$1"
    fi
}

# bench ENDPOINT CLIENTS REQUESTS: prints "puts/s p50_ms p99_ms completed errors cpu_ticks"
# (cpu_ticks "-" when no server of ours runs).
bench() {
    local out pids=()
    if [[ ${#SERVER_PIDS[@]} -gt 0 ]]; then
        pids=(--server-pids "$(IFS=,; echo "${SERVER_PIDS[*]}")")
    fi
    out=$("$PUT_BENCH" "$1" "$2" "$3" 16 256 --max-seconds "$MAX_SECONDS" \
        "${CLIENT_TLS[@]}" "${BENCH_USER[@]}" "${pids[@]}") \
        || die "put_bench failed against $1 with $2 clients"
    awk '$1 == "puts/s" {t = $2} $1 == "p50_ms" {p50 = $2} $1 == "p99_ms" {p99 = $2}
         $1 == "completed" {c = $2} $1 == "errors" {e = $2} $1 == "server_cpu_ticks" {cpu = $2}
         END {print t, p50, p99, c, e, (cpu == "" ? "-" : cpu)}' <<<"$out"
}

# measure LABEL ENDPOINT: runs 1 and 64 clients, stores "puts/s p50_ms p99_ms completed errors
# cpu_us_per_put" in RESULT_<label>_<clients> (cpu "-" when the server is not ours to read). The
# CPU time is the servers' over the timed window only: put_bench reads /proc/PID/stat when its
# clock starts and stops, after connecting (TLS handshakes, Authenticate) and a warm-up put.
measure() {
    local label=$1 endpoint=$2 clients requests result cpu
    for clients in 1 64; do
        requests=$REQUESTS_1
        [[ $clients == 1 ]] || requests=$REQUESTS_64
        log "$label: $clients client(s), $requests puts"
        result=$(bench "$endpoint" "$clients" "$requests")
        cpu=$(awk -v t="$(field "$result" 6)" -v hz="$(getconf CLK_TCK)" -v n="$(field "$result" 4)" \
            'BEGIN { if (t != "-" && n > 0) printf "%.0f", t * 1e6 / hz / n; else print "-" }')
        result="${result% *} $cpu"
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
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
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
IFS=, read -r -a MODES <<<"$SECURITY"
for mode in "${MODES[@]}"; do
    use_security "$mode"
done
for server in "${SERVERS[@]}"; do
    bin=${server#*=}
    [[ -x $bin ]] || die "oxetcd binary $bin not found (cargo build --release, or pass its path)"
done

LABELS=(etcd)
for server in "${SERVERS[@]}"; do
    LABELS+=("${server%%=*}")
done
for mode in "${MODES[@]}"; do
    use_security "$mode"
    log "configuration $mode"
    start "etcd.$mode" "$ETCD"
    measure "etcd.$mode" "$EP"
    stop_server
    for server in "${SERVERS[@]}"; do
        label=${server%%=*}
        start "$label.$mode" "${server#*=}"
        measure "$label.$mode" "$EP"
        stop_server
    done
done

for mode in "${MODES[@]}"; do
    printf '\n%s\n\n| server | clients | puts/s | vs etcd | p50 / p99 ms | server CPU us/put |\n' "$mode"
    printf '|---|---|---|---|---|---|\n'
    for clients in 1 64; do
        etcd_result=$(result "etcd.$mode" "$clients")
        for label in "${LABELS[@]}"; do
            r=$(result "$label.$mode" "$clients")
            printf '| %s | %s | %s | %s | %s / %s | %s |\n' "$label" "$clients" "$(field "$r" 1)" \
                "$(ratio "$(field "$r" 1)" "$(field "$etcd_result" 1)")" \
                "$(field "$r" 2)" "$(field "$r" 3)" "$(field "$r" 6)"
        done
    done
done

if [[ ${#MODES[@]} -gt 1 ]]; then
    printf '\n64 clients, puts/s (ratio to etcd 3.4 in the same configuration)\n\n| server |'
    printf ' %s |' "${MODES[@]}"
    printf '\n|---|'
    printf -- '---|%.0s' "${MODES[@]}"
    printf '\n'
    for label in "${LABELS[@]}"; do
        printf '| %s |' "$label"
        for mode in "${MODES[@]}"; do
            r=$(result "$label.$mode" 64)
            printf ' %s (%s) |' "$(field "$r" 1)" \
                "$(ratio "$(field "$r" 1)" "$(field "$(result "etcd.$mode" 64)" 1)")"
        done
        printf '\n'
    done
fi
