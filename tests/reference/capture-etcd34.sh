#!/usr/bin/env bash
# Records what etcdctl 3.4 prints (stdout, stderr, exit code) against a real etcd 3.4 member on
# loopback, into tests/reference/etcd-3.4/. Black-box tests compare oxetcd's etcdctl output with
# these files after normalising the fields listed in that directory's README.md.
#
# Usage: tests/reference/capture-etcd34.sh            (needs Debian's etcd-server and etcd-client)
# Env:   ETCD=/usr/bin/etcd ETCDCTL=/usr/bin/etcdctl OUT=<dir> BASE_PORT=22379
#
# Two throwaway members run, each on 127.0.0.1 only, with data dirs in a temp dir: "main" (default
# flags) and "limits" (--max-request-bytes 1024 --max-txn-ops 4 --quota-backend-bytes 131072;
# keep in sync with LIMITS_ARGS in tests/it/common/reference.rs). A third endpoint ("down") has
# nothing listening. Needs bash, coreutils and etcd/etcdctl only (no curl, no python).
# Commands run in a fixed order against a fresh member, so revisions are the same on every run.
# Both members are stopped and the temp dir removed on exit, whatever happens.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ETCD=${ETCD:-/usr/bin/etcd}
ETCDCTL=${ETCDCTL:-/usr/bin/etcdctl}
OUT=${OUT:-$HERE/etcd-3.4}
BASE_PORT=${BASE_PORT:-22379}
NAME=node1
WORK=$(mktemp -d /tmp/capture-etcd34.XXXXXX)
PIDS=()
SEQ=0

log() { printf 'capture: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cleanup() {
    local pid
    for pid in ${BG_PID:-} ${FEEDER:-} "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stop_pid PID: SIGTERM, wait up to 10 s, then SIGKILL.
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pick_port PREFERRED: the preferred port if nothing listens there, else a free one below the
# kernel's ephemeral range.
pick_port() {
    local port=$1 tries=0
    while port_busy "$port" || [[ " ${TAKEN:-} " == *" $port "* ]]; do
        port=$((20000 + RANDOM % 12000))
        tries=$((tries + 1))
        [[ $tries -lt 200 ]] || die "no free port"
    done
    TAKEN="${TAKEN:-} $port"
    echo "$port"
}

# http_get PORT PATH: raw HTTP/1.1 response, no curl needed.
http_get() {
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$2" "$1" >&3
    timeout 5 cat <&3
    exec 3<&-
}

# http_post PORT PATH JSON: raw HTTP/1.1 response of a JSON POST (the grpc-gateway).
http_post() {
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'POST %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nContent-Type: application/json\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' \
        "$2" "$1" "${#3}" "$3" >&3
    timeout 5 cat <&3
    exec 3<&-
}

# start_member LABEL CLIENT_PORT PEER_PORT [extra flags...]: starts a member (pid appended to PIDS)
# and waits until GET /health says "health":"true".
start_member() {
    local label=$1 cport=$2 pport=$3 i
    shift 3
    local client="http://127.0.0.1:$cport" peer="http://127.0.0.1:$pport"
    "$ETCD" --name "$NAME" --data-dir "$WORK/$label.data" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$NAME=$peer" "$@" >"$WORK/$label.log" 2>&1 &
    PIDS+=("$!")
    for i in $(seq 300); do
        if http_get "$cport" /health 2>/dev/null | grep -q '"health":"true"'; then
            log "$label member ready on $client"
            return 0
        fi
        kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$WORK/$label.log" >&2; die "$label member exited"; }
        sleep 0.1
    done
    cat "$WORK/$label.log" >&2
    die "$label member not healthy within 30 s"
}

# record KIND NAME STDIN_FILE ARGS...: appends one command to commands.txt, the machine-readable
# replay list (format in README.md). KIND: run (setup, not captured), cap, watch-start,
# watch-stop, http, fill. MEMBER says which member the command went to (main, limits, down).
record() {
    local kind=$1 name=$2 stdin_file=$3 arg
    shift 3
    {
        printf '@ %s %s %s\nargc %s\n' "$kind" "$name" "$MEMBER" "$#"
        for arg in "$@"; do
            [[ $arg != *$'\n'* ]] || die "argument with a newline cannot be recorded: $name"
            printf '%s\n' "$arg"
        done
        if [[ -n $stdin_file ]]; then
            printf 'stdin %s\n' "$(stat -c %s "$stdin_file")"
            cat "$stdin_file"
            printf '\n'
        fi
    } >>"$OUT/commands.txt"
}

# index_line NAME EXIT ARGS...: one line per command in run order, captured or not.
index_line() {
    local name=$1 rc=$2
    shift 2
    SEQ=$((SEQ + 1))
    printf '%03d\t%s\t%s\t%s\n' "$SEQ" "$name" "$rc" "$(ABBREVIATE=1 quote_args "$@")" >>"$OUT/index.tsv"
}

# quote_args ARGS...: the etcdctl command line, shell-quoted; with ABBREVIATE=1 arguments longer
# than 64 bytes are shown as <N bytes>.
quote_args() {
    local out="etcdctl --endpoints=$EP" arg
    for arg in "$@"; do
        if [[ ${ABBREVIATE:-0} == 1 && ${#arg} -gt 64 ]]; then
            out+=" <${#arg} bytes>"
        elif [[ $arg =~ ^[A-Za-z0-9_./=:,+-]+$ ]]; then out+=" $arg"; else out+=" $(printf '%q' "$arg")"; fi
    done
    printf '%s' "$out"
}

ctl() { ETCDCTL_API=3 timeout 30 "$ETCDCTL" --endpoints="$EP" "$@"; }

# cap NAME [--stdin TEXT] [--] ARGS...: runs etcdctl ARGS in $WORK and records
# NAME.cmd (command line, exit code, stdin), NAME.stdout and NAME.stderr byte for byte.
cap() {
    local name=$1 stdin_file=/dev/null has_stdin=0 rc
    shift
    if [[ ${1:-} == --stdin ]]; then
        has_stdin=1
        stdin_file="$WORK/stdin"
        printf '%s' "$2" >"$stdin_file"
        shift 2
    fi
    [[ ${1:-} == -- ]] && shift
    [[ ! -e "$OUT/$name.cmd" ]] || die "duplicate capture name $name"
    set +e
    (cd "$WORK" && ctl "$@" <"$stdin_file" >"$OUT/$name.stdout" 2>"$OUT/$name.stderr")
    rc=$?
    set -e
    {
        quote_args "$@"
        printf '\nexit: %s\n' "$rc"
        if [[ $has_stdin == 1 ]]; then
            printf 'stdin:\n'
            cat "$stdin_file"
        fi
    } >"$OUT/$name.cmd"
    index_line "$name" "$rc" "$@"
    [[ $has_stdin == 1 ]] || stdin_file=
    record cap "$name" "$stdin_file" "$@"
}

# run ARGS...: an uncaptured setup command (listed in index.tsv with name "-"); must succeed.
run() {
    ctl "$@" >/dev/null 2>"$WORK/run.err" || { cat "$WORK/run.err" >&2; die "setup failed: $*"; }
    index_line - 0 "$@"
    record run - "" "$@"
}

# run_stdin TEXT ARGS...: like run, feeding TEXT on stdin.
run_stdin() {
    local text=$1
    shift
    printf '%s' "$text" >"$WORK/run.stdin"
    ctl "$@" <"$WORK/run.stdin" >/dev/null 2>"$WORK/run.err" \
        || { cat "$WORK/run.err" >&2; die "setup failed: $*"; }
    index_line - 0 "$@"
    record run - "$WORK/run.stdin" "$@"
}

# Current revision of the member at $EP (reads do not change it).
revision() { ctl get revision-probe -w json | grep -o '"revision":[0-9]*' | head -1 | cut -d: -f2; }

# bg_start NAME ARGS...: starts a long-running etcdctl (watch) in the background, output captured;
# stdin from the file $BG_STDIN if set (recorded from $BG_STDIN_COPY, as BG_STDIN may be a fifo).
bg_start() {
    local name=$1
    shift
    [[ ! -e "$OUT/$name.cmd" ]] || die "duplicate capture name $name"
    : >"$OUT/$name.stdout"
    : >"$OUT/$name.stderr"
    (cd "$WORK" && ETCDCTL_API=3 exec "$ETCDCTL" --endpoints="$EP" "$@" \
        <"${BG_STDIN:-/dev/null}" >"$OUT/$name.stdout" 2>"$OUT/$name.stderr") &
    BG_PID=$!
    BG_NAME=$name
    BG_ARGS=("$@")
    BG_RECORDED_STDIN=${BG_STDIN_COPY:-}
    record watch-start "$name" "$BG_RECORDED_STDIN" "$@"
}

# bg_finish: waits until the background command's stdout has not grown for 1 s (at most 15 s),
# then SIGTERMs it and records the exit code (143 = killed by the capture script, as intended).
bg_finish() {
    local last=-1 size stable=0 i rc
    for i in $(seq 150); do
        kill -0 "$BG_PID" 2>/dev/null || break
        size=$(stat -c %s "$OUT/$BG_NAME.stdout" 2>/dev/null || echo 0)
        if [[ $size == "$last" && $size -gt 0 ]]; then
            stable=$((stable + 1))
            [[ $stable -ge 10 ]] && break
        else
            stable=0
        fi
        last=$size
        sleep 0.1
    done
    kill -TERM "$BG_PID" 2>/dev/null || true
    set +e
    wait "$BG_PID"
    rc=$?
    set -e
    BG_PID=
    {
        quote_args "${BG_ARGS[@]}"
        printf '\nexit: %s\n' "$rc"
        if [[ -n $BG_RECORDED_STDIN ]]; then
            printf 'stdin:\n'
            cat "$BG_RECORDED_STDIN"
        fi
    } >"$OUT/$BG_NAME.cmd"
    index_line "$BG_NAME" "$rc" "${BG_ARGS[@]}"
    record watch-stop "$BG_NAME" ""
}

# wait_watchers N: waits until the member reports N watchers (etcd_debugging_mvcc_watcher_total),
# i.e. a background watch is registered before the writes it should see live.
wait_watchers() {
    local i
    for i in $(seq 100); do
        if http_get "$PORT" /metrics | grep -q "^etcd_debugging_mvcc_watcher_total $1\$"; then
            return 0
        fi
        sleep 0.1
    done
    die "watcher count never reached $1"
}

# cap_http NAME PORT PATH [JSON]: status line, Content-Type and body of a GET, or of a POST of
# JSON when given (Date and other headers left out), into NAME.http.
cap_http() {
    local name=$1 port=$2 path=$3 body=${4:-} response request
    [[ ! -e "$OUT/$name.http" ]] || die "duplicate capture name $name"
    if [[ -n $body ]]; then
        response=$(http_post "$port" "$path" "$body" | tr -d '\r')
        request="POST http://127.0.0.1:$port$path $body"
    else
        response=$(http_get "$port" "$path" | tr -d '\r')
        request="GET http://127.0.0.1:$port$path"
    fi
    {
        printf '%s\n' "$(head -1 <<<"$response")"
        grep -i '^content-type:' <<<"$response" || true
        printf '\n%s' "$(sed '1,/^$/d' <<<"$response")"
    } >"$OUT/$name.http"
    SEQ=$((SEQ + 1))
    printf '%03d\t%s\t-\t%s\n' "$SEQ" "$name" "$request" >>"$OUT/index.tsv"
    if [[ -n $body ]]; then
        record http "$name" "" POST "$path" "$body"
    else
        record http "$name" "" GET "$path"
    fi
}

[[ -x $ETCD && -x $ETCDCTL ]] || die "need $ETCD and $ETCDCTL (apt-get install etcd-server etcd-client)"
mkdir -p "$OUT"
rm -f "$OUT"/*.cmd "$OUT"/*.stdout "$OUT"/*.stderr "$OUT"/*.http "$OUT"/index.tsv "$OUT"/run.env \
    "$OUT"/commands.txt
: >"$OUT/commands.txt"
printf 'seq\tname\texit\tcommand\n' >"$OUT/index.tsv"

PORT=$(pick_port "$BASE_PORT")
PEER_PORT=$(pick_port $((BASE_PORT + 1)))
LIMITS_PORT=$(pick_port $((BASE_PORT + 2)))
LIMITS_PEER_PORT=$(pick_port $((BASE_PORT + 3)))
DOWN_PORT=$(pick_port $((BASE_PORT + 4)))
start_member main "$PORT" "$PEER_PORT"
EP="http://127.0.0.1:$PORT"
MEMBER=main

HEADER=$(ctl get revision-probe -w json)
CLUSTER_ID=$(grep -o '"cluster_id":[0-9]*' <<<"$HEADER" | cut -d: -f2)
MEMBER_ID=$(grep -o '"member_id":[0-9]*' <<<"$HEADER" | cut -d: -f2)

###############################################################################################
log "http"
cap_http http-health "$PORT" /health
cap_http http-version "$PORT" /version
cap version -- version

###############################################################################################
log "put"
cap put -- put foo bar
cap put-prev-kv -- put foo bar2 --prev-kv
cap put-prev-kv-new-key -- put newkey v1 --prev-kv
cap put-json -- put foo bar3 -w json
cap put-prev-kv-json -- put foo bar4 --prev-kv -w json
cap lease-grant-for-put -- lease grant 600
LEASE_PUT=$(awk '{print $2}' "$OUT/lease-grant-for-put.stdout")
cap put-lease -- put lkey lval --lease="$LEASE_PUT"
cap put-ignore-lease -- put lkey lval2 --ignore-lease
cap get-after-ignore-lease -- get lkey -w json
cap put-ignore-value -- put lkey --ignore-value
cap get-after-ignore-value -- get lkey -w json
cap put-ignore-value-lease -- put lkey --ignore-value --lease="$LEASE_PUT"
cap put-ignore-value-ignore-lease -- put lkey --ignore-value --ignore-lease
cap get-after-ignore-both -- get lkey -w json
cap put-ignore-value-missing-key -- put nokey --ignore-value
cap put-ignore-value-with-value -- put foo bar --ignore-value
cap put-ignore-lease-missing-key -- put nokey v --ignore-lease
cap put-ignore-lease-with-lease -- put foo v --ignore-lease --lease="$LEASE_PUT"
cap put-unknown-lease -- put foo v --lease=1234
cap put-bad-lease -- put foo v --lease=xyz
cap put-empty-key -- put "" v
cap put-no-args -- put
cap put-value-from-stdin --stdin $'from stdin\n' -- put stdinkey
cap get-value-from-stdin -- get stdinkey -w json
cap put-value-leading-dash -- put dashkey -- -dash
cap get-value-leading-dash -- get dashkey

###############################################################################################
log "get"
# Four keys whose orders differ for every --sort-by target:
#   KEY a b c d | CREATE c a d b | MODIFY d c b a | VERSION b(1) d(2) a(3) c(4) | VALUE d a c b
run put /j/x j
run put /k/c tmp-c1
R_GET_FIRST=$(revision)
run put /k/a tmp-a1
run put /k/d tmp-d1
run put /k/d alpha
run put /k/c tmp-c2
run put /k/c tmp-c3
run put /k/c charlie
R_GET_MID=$(revision)
run put /k/b delta
run put /k/a tmp-a2
run put /k/a bravo
run put /k0 after-prefix
R_GET_LAST=$(revision)

cap get-key -- get /k/a
cap get-range -- get /k/a /k/c
cap get-prefix -- get /k/ --prefix
cap get-from-key -- get /k/c --from-key
cap get-prefix-and-from-key -- get /k/ --prefix --from-key
cap get-limit -- get /k/ --prefix --limit=2
cap get-limit-json -- get /k/ --prefix --limit=2 -w json
cap get-rev -- get /k/ --prefix --rev="$R_GET_MID"
cap get-rev-json -- get /k/ --prefix --rev="$R_GET_MID" -w json
for target in CREATE KEY MODIFY VALUE VERSION; do
    for order in ASCEND DESCEND; do
        lower=$(tr 'A-Z' 'a-z' <<<"$target-$order")
        cap "get-sort-$lower" -- get /k/ --prefix --sort-by="$target" --order="$order"
    done
done
cap get-sort-by-only -- get /k/ --prefix --sort-by=VERSION
cap get-order-only -- get /k/ --prefix --order=DESCEND
cap get-sort-lowercase -- get /k/ --prefix --sort-by=version
cap get-sort-bad -- get /k/ --prefix --sort-by=BOGUS
cap get-order-bad -- get /k/ --prefix --order=SIDEWAYS
cap get-keys-only -- get /k/ --prefix --keys-only
cap get-keys-only-json -- get /k/ --prefix --keys-only -w json
cap get-count-only -- get /k/ --prefix --count-only
cap get-count-only-json -- get /k/ --prefix --count-only -w json
cap get-print-value-only -- get /k/ --prefix --print-value-only
cap get-keys-and-value-only -- get /k/ --prefix --keys-only --print-value-only
cap get-consistency-s -- get /k/a --consistency=s
cap get-consistency-l -- get /k/a --consistency=l
cap get-consistency-bad -- get /k/a --consistency=x
cap get-hex -- get /k/a --hex
cap get-write-json -- get /k/ --prefix -w json
cap get-write-fields -- get /k/ --prefix -w fields
cap get-write-simple -- get /k/ --prefix -w simple
cap get-write-protobuf -- get /k/a -w protobuf
cap get-write-table -- get /k/a -w table
cap get-write-bad -- get /k/a -w yaml
cap get-min-mod-revision -- get /k/ --prefix --min-mod-revision="$R_GET_MID"
cap get-max-mod-revision -- get /k/ --prefix --max-mod-revision="$R_GET_MID"
cap get-min-create-revision -- get /k/ --prefix --min-create-revision=$((R_GET_FIRST + 1))
cap get-max-create-revision -- get /k/ --prefix --max-create-revision=$((R_GET_FIRST + 1))
# etcdctl 3.4 has no flags for the revision filters nor --count-only (3.5 added them); the API
# has them, so the reference goes through the grpc-gateway (keys are base64: "/k/" = L2sv, and
# "/k0" = L2sw, the end of the /k/ prefix).
cap_http gateway-range-min-mod-revision "$PORT" /v3/kv/range \
    '{"key":"L2sv","range_end":"L2sw","min_mod_revision":'"$R_GET_MID"'}'
cap_http gateway-range-max-mod-revision "$PORT" /v3/kv/range \
    '{"key":"L2sv","range_end":"L2sw","max_mod_revision":'"$R_GET_MID"'}'
cap_http gateway-range-min-create-revision "$PORT" /v3/kv/range \
    '{"key":"L2sv","range_end":"L2sw","min_create_revision":'"$((R_GET_FIRST + 1))"'}'
cap_http gateway-range-max-create-revision "$PORT" /v3/kv/range \
    '{"key":"L2sv","range_end":"L2sw","max_create_revision":'"$((R_GET_FIRST + 1))"'}'
cap_http gateway-range-count-only "$PORT" /v3/kv/range '{"key":"L2sv","range_end":"L2sw","count_only":true}'
cap_http gateway-range-mod-revision-window "$PORT" /v3/kv/range \
    '{"key":"L2sv","range_end":"L2sw","min_mod_revision":'"$((R_GET_MID - 3))"',"max_mod_revision":'"$((R_GET_LAST - 2))"',"keys_only":true}'
cap get-missing -- get nosuchkey
cap get-missing-json -- get nosuchkey -w json
cap get-empty-key -- get ""
cap get-empty-key-prefix -- get "" --prefix --keys-only
cap get-empty-key-from-key -- get "" --from-key --keys-only
cap get-future-rev -- get foo --rev=100000
cap get-negative-rev -- get foo --rev=-1
cap get-no-args -- get

###############################################################################################
log "del"
for key in /d/a /d/b /d/c /d/d /d/e /e/x /p/a /p/b zz/a zz/b; do
    run put "$key" "v$key"
done
cap del-key -- del /d/a
cap del-missing -- del /d/a
cap del-prev-kv -- del /d/b --prev-kv
cap del-range -- del /d/c /d/d
cap del-prefix -- del /d/ --prefix
cap del-prefix-prev-kv -- del /p/ --prefix --prev-kv
cap del-json -- del /e/x -w json
cap del-empty-key -- del ""
cap del-no-args -- del
cap del-from-key -- del zz/ --from-key
cap get-after-del-from-key -- get zz/ --from-key

###############################################################################################
log "txn"
run put t/a 1
run put t/b 2
cap txn-all-compares --stdin $'create("t/a") > "0"\nmod("t/a") > "0"\nversion("t/b") = "1"\nvalue("t/b") != "x"\n\nget t/ --prefix\n\n\n' -- txn
TXN_SUCCESS=$'value("t/a") = "1"\n\nput t/a 10\nget t/b\n\nput t/a 100\n\n'
cap txn-success --stdin "$TXN_SUCCESS" -- txn
cap txn-failure --stdin $'value("t/a") = "1"\n\nput t/c never\n\nput t/c failure-branch\nget t/c\n\n' -- txn
cap txn-interactive-false --stdin $'mod("t/a") > "0"\n\nget t/a\n\n\n' -- txn --interactive=false
cap txn-interactive --stdin $'version("t/b") = "1"\n\nput t/b 20\n\nget t/b\n\n' -- txn -i
cap txn-lease-compare-panics --stdin $'lease("t/a") = "0"\n\nget t/a\n\n\n' -- txn
cap txn-no-compares --stdin $'\nput t/d 4\ndel t/x\n\n\n' -- txn
cap txn-put-and-del-same-key --stdin $'\nput t/d 4\ndel t/d\n\n\n' -- txn
cap txn-compare-range-malformed --stdin $'mod("t/a" "t/z") > "0"\n\nget t/a\n\n\n' -- txn
cap txn-prev-kv-ops --stdin $'\nput --prev-kv t/a 1000\ndel --prev-kv t/b\n\n\n' -- txn
cap txn-json --stdin $'value("t/a") = "1000"\n\nget t/a\nput t/e 5\n\n\n' -- txn -w json
cap txn-empty --stdin $'\n\n\n' -- txn
TOO_MANY=$'\n'
for i in $(seq 129); do TOO_MANY+="put t/many$i x"$'\n'; done
TOO_MANY+=$'\n\n'
cap txn-too-many-ops --stdin "$TOO_MANY" -- txn
cap txn-duplicate-key --stdin $'\nput t/dup 1\nput t/dup 2\n\n\n' -- txn
cap txn-bad-compare --stdin $'size("t/a") = "1"\n\n\n\n' -- txn
cap txn-bad-op --stdin $'\nfrobnicate t/a\n\n\n' -- txn
cap txn-unknown-lease-put --stdin $'\nput t/l v --lease=1234\n\n\n' -- txn

###############################################################################################
log "watch"
R_WATCH=$(( $(revision) + 1 ))
bg_start watch-prefix-live watch /w/ --prefix
wait_watchers 1
run put /w/a 1
run put /w/b 2
run put /w/a 3
run del /w/a
run_stdin $'\nput /w/c 4\nput /w/d 5\n\n\n' txn
run del /w/ --prefix
bg_finish
cap_watch() {
    local name=$1
    shift
    bg_start "$name" "$@"
    bg_finish
}
cap_watch watch-rev watch /w/a --rev="$R_WATCH"
cap_watch watch-rev-prefix-prev-kv watch /w/ --prefix --rev="$R_WATCH" --prev-kv
cap_watch watch-rev-json watch /w/a --rev="$R_WATCH" -w json
cap_watch watch-range watch /w/b /w/d --rev="$R_WATCH"
# Interactive watch reads requests from stdin and gives up at EOF, so keep stdin open a while.
mkfifo "$WORK/watch-stdin"
{ printf 'watch /w/b --rev=%s\n' "$R_WATCH"; sleep 5; } >"$WORK/watch-stdin" &
FEEDER=$!
printf 'watch /w/b --rev=%s\n' "$R_WATCH" >"$WORK/watch-stdin-copy"
BG_STDIN="$WORK/watch-stdin" BG_STDIN_COPY="$WORK/watch-stdin-copy" bg_start watch-interactive watch -i
bg_finish
kill "$FEEDER" 2>/dev/null || true
wait "$FEEDER" 2>/dev/null || true
FEEDER=
cap_watch watch-no-key watch

###############################################################################################
log "lease"
cap lease-grant -- lease grant 600
LEASE_A=$(awk '{print $2}' "$OUT/lease-grant.stdout")
cap lease-grant-json -- lease grant 300 -w json
LEASE_JSON=$(grep -o '"ID":[0-9]*' "$OUT/lease-grant-json.stdout" | cut -d: -f2)
run put l/a 1 --lease="$LEASE_A"
run put l/b 2 --lease="$LEASE_A"
cap lease-keep-alive-once -- lease keep-alive --once "$LEASE_A"
cap lease-keep-alive-once-json -- lease keep-alive --once "$LEASE_A" -w json
cap lease-timetolive -- lease timetolive "$LEASE_A"
cap lease-timetolive-keys -- lease timetolive "$LEASE_A" --keys
cap lease-timetolive-keys-json -- lease timetolive "$LEASE_A" --keys -w json
cap lease-list -- lease list
cap lease-list-json -- lease list -w json
cap lease-revoke -- lease revoke "$LEASE_A"
cap get-after-lease-revoke -- get l/ --prefix
cap lease-timetolive-revoked -- lease timetolive "$LEASE_A"
cap lease-revoke-unknown -- lease revoke 1234
cap lease-keep-alive-once-unknown -- lease keep-alive --once 1234
cap lease-timetolive-unknown -- lease timetolive 1234
cap lease-grant-bad-ttl -- lease grant abc
cap lease-grant-zero-ttl -- lease grant 0
LEASE_ZERO=$(awk '{print $2}' "$OUT/lease-grant-zero-ttl.stdout")
cap lease-revoke-bad-id -- lease revoke xyz

###############################################################################################
log "compaction"
R_COMPACT=$R_GET_MID
R_NOW=$(revision)
cap compaction -- compaction "$R_COMPACT"
cap get-compacted-rev -- get /k/ --prefix --rev=$((R_COMPACT - 1))
cap get-at-compact-rev -- get /k/ --prefix --rev="$R_COMPACT"
cap compaction-same-rev -- compaction "$R_COMPACT"
cap compaction-older-rev -- compaction $((R_COMPACT - 1))
cap compaction-future-rev -- compaction $((R_NOW + 1000))
cap compaction-physical -- compaction "$R_GET_LAST" --physical
cap compaction-bad-rev -- compaction abc
cap_watch watch-compacted-rev watch foo --rev=2
cap get-future-rev-after-compaction -- get foo --rev=$((R_NOW + 1000))

###############################################################################################
log "maintenance"
cap defrag -- defrag
cap endpoint-status -- endpoint status
cap endpoint-status-table -- endpoint status -w table
cap endpoint-status-json -- endpoint status -w json
cap endpoint-health -- endpoint health
cap endpoint-health-table -- endpoint health -w table
cap endpoint-health-json -- endpoint health -w json
cap endpoint-health-cluster -- endpoint health --cluster
cap endpoint-hashkv -- endpoint hashkv
cap endpoint-hashkv-table -- endpoint hashkv -w table
cap endpoint-hashkv-json -- endpoint hashkv -w json
cap endpoint-hashkv-rev-compacted -- endpoint hashkv --rev="$R_GET_LAST"
cap endpoint-hashkv-rev -- endpoint hashkv --rev="$(revision)"
cap alarm-list -- alarm list
cap alarm-disarm -- alarm disarm
cap snapshot-save -- snapshot save snapshot.db
cap snapshot-status-table -- snapshot status snapshot.db -w table
cap snapshot-status-json -- snapshot status snapshot.db -w json
cap member-list -- member list
cap member-list-table -- member list -w table
cap member-list-json -- member list -w json
R_FINAL=$(revision)

###############################################################################################
log "unreachable endpoint"
SAVED_EP=$EP
EP="http://127.0.0.1:$DOWN_PORT"
MEMBER=down
cap unreachable-get -- get foo --dial-timeout=1s
cap unreachable-endpoint-health -- endpoint health --dial-timeout=1s
EP=$SAVED_EP
MEMBER=main

###############################################################################################
log "limits member"
start_member limits "$LIMITS_PORT" "$LIMITS_PEER_PORT" \
    --max-request-bytes 1024 --max-txn-ops 4 --quota-backend-bytes 131072
EP="http://127.0.0.1:$LIMITS_PORT"
MEMBER=limits
LIMITS_HEADER=$(ctl get revision-probe -w json)
LIMITS_CLUSTER_ID=$(grep -o '"cluster_id":[0-9]*' <<<"$LIMITS_HEADER" | cut -d: -f2)
LIMITS_MEMBER_ID=$(grep -o '"member_id":[0-9]*' <<<"$LIMITS_HEADER" | cut -d: -f2)
VALUE_900=$(printf 'v%.0s' $(seq 900))
VALUE_2000=$(printf 'v%.0s' $(seq 2000))
cap limits-put-small -- put small "$VALUE_900"
cap limits-request-too-large -- put big "$VALUE_2000"
cap limits-grpc-message-too-large --stdin "$(head -c 600000 /dev/zero | tr '\0' 'v')" -- put huge
cap limits-txn-max-ops --stdin $'\nput t1 1\nput t2 2\nput t3 3\nput t4 4\n\n\n' -- txn
cap limits-txn-too-many-ops --stdin $'\nput t1 1\nput t2 2\nput t3 3\nput t4 4\nput t5 5\n\n\n' -- txn
# Fill the 128 KiB quota with 900-byte values until etcd raises NOSPACE (bounded).
FILLED=0
for i in $(seq 2000); do
    if ! ctl put "fill/$i" "$VALUE_900" >/dev/null 2>&1; then
        FILLED=$i
        break
    fi
done
[[ $FILLED -gt 0 ]] || die "quota never exceeded"
log "NOSPACE after $FILLED puts"
index_line - 0 put "fill/1..fill/$FILLED" "$VALUE_900"
record fill - "" fill/ "$VALUE_900"
cap nospace-put -- put more "$VALUE_900"
cap nospace-alarm-list -- alarm list
cap nospace-get -- get small --keys-only
cap nospace-txn-get --stdin $'\nget small --keys-only\n\n\n' -- txn
cap nospace-txn-put --stdin $'\nput t1 x\n\n\n' -- txn
cap nospace-del -- del small
cap nospace-lease-grant -- lease grant 60
cap nospace-endpoint-status-table -- endpoint status -w table
cap nospace-endpoint-health -- endpoint health
cap_http nospace-http-health "$LIMITS_PORT" /health
R_LIMITS=$(revision)
cap nospace-compaction -- compaction "$R_LIMITS"
cap nospace-defrag -- defrag
cap nospace-alarm-disarm -- alarm disarm
cap nospace-alarm-list-after-disarm -- alarm list
cap nospace-put-after-disarm -- put more after-disarm
EP=$SAVED_EP
MEMBER=main

###############################################################################################
log "short lease (last: it expires on its own)"
cap lease-grant-1s -- lease grant 1
LEASE_1S=$(awk '{print $2}' "$OUT/lease-grant-1s.stdout")

{
    printf '# Values that differ from run to run or server to server (see README.md).\n'
    printf 'ETCD_VERSION=%s\n' "$("$ETCD" --version | awk '/etcd Version/ {print $3}')"
    printf 'ETCDCTL_VERSION=%s\n' "$("$ETCDCTL" version | awk '/etcdctl version/ {print $3}')"
    printf 'ENDPOINT=%s\n' "$SAVED_EP"
    printf 'PEER_URL=http://127.0.0.1:%s\n' "$PEER_PORT"
    printf 'MEMBER_ID=%s\nMEMBER_ID_HEX=%x\n' "$MEMBER_ID" "$MEMBER_ID"
    printf 'CLUSTER_ID=%s\nCLUSTER_ID_HEX=%x\n' "$CLUSTER_ID" "$CLUSTER_ID"
    printf 'LEASE_PUT_HEX=%s\nLEASE_A_HEX=%s\nLEASE_JSON=%s\nLEASE_ZERO_HEX=%s\nLEASE_1S_HEX=%s\n' \
        "$LEASE_PUT" "$LEASE_A" "$LEASE_JSON" "$LEASE_ZERO" "$LEASE_1S"
    printf 'DOWN_ENDPOINT=http://127.0.0.1:%s\n' "$DOWN_PORT"
    printf 'LIMITS_ENDPOINT=http://127.0.0.1:%s\n' "$LIMITS_PORT"
    printf 'LIMITS_PEER_URL=http://127.0.0.1:%s\n' "$LIMITS_PEER_PORT"
    printf 'LIMITS_MEMBER_ID=%s\nLIMITS_MEMBER_ID_HEX=%x\n' "$LIMITS_MEMBER_ID" "$LIMITS_MEMBER_ID"
    printf 'LIMITS_CLUSTER_ID=%s\nLIMITS_CLUSTER_ID_HEX=%x\n' "$LIMITS_CLUSTER_ID" "$LIMITS_CLUSTER_ID"
    printf 'LIMITS_FILL_PUTS=%s\n' "$FILLED"
    printf '# Revisions (deterministic for a fresh member and this command order).\n'
    printf 'R_GET_FIRST=%s\nR_GET_MID=%s\nR_GET_LAST=%s\n' "$R_GET_FIRST" "$R_GET_MID" "$R_GET_LAST"
    printf 'R_WATCH=%s\nR_COMPACT=%s\nR_FINAL=%s\n' "$R_WATCH" "$R_COMPACT" "$R_FINAL"
} >"$OUT/run.env"

log "wrote $(ls "$OUT"/*.cmd | wc -l) captures to $OUT"
