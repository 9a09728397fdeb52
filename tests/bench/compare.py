#!/usr/bin/env python3
"""Compare oxetcd with Debian's etcd 3.4 on this machine: one table of medians and ratios.

    tests/bench/compare.py            (a manual benchmark: CI does not run it)

Each workload runs ROUNDS times per server, etcd and oxetcd alternately (the order flips every
round), each run on a fresh data directory with fresh loopback ports. Both servers get the
same flags and their defaults, which sync the raft log / WAL before acknowledging a write, so
durability is equal. The load comes from oxetcd-bench (built with the crate); the servers'
CPU per request is user+sys time from /proc/PID/stat over the timed window only (the bench
tool reads it when its clock starts and stops; summed over members), the bench tool's own CPU
per request is shown as its own row. Resident memory is VmRSS (and VmHWM, the peak) from
/proc/PID/status, the data directory size is du's, restart time runs from exec to /health OK.

Rows: server CPU per put and per linearizable range; put throughput and p99 with 1/64/256
clients; linearizable and serializable range with 64 clients; watch delivery p99 with WATCHERS
watchers; then with KEYS keys loaded: resident memory right after loading (and the peak during
the load), data dir size, a paginated list (limit 500) page latency, restart to /health, and
resident memory after the restart. MEMBERS=3 runs 3-member clusters instead (load spread over
every member's client URL): put 1/64 clients, range 64, txn 64.

Env: ROUNDS (3), MEMBERS (1 or 3), KEYS (1000000; the memory/restart rows), DURATION (seconds
per throughput run, 10), WATCHERS (1000), RANGE_KEYS (10000, the key space of the range rows),
LOAD_TXN_OPS (100 puts per txn when loading KEYS), QUICK=1 (small sizes, one round: a smoke
run), ETCD (/usr/bin/etcd), OXETCD and BENCH (the release binaries under $CARGO_TARGET_DIR or
target/), BENCH_DIR (where data dirs go; put it on the disk you care about), ONLY (comma list
of workload names to run, e.g. ONLY=put-1,big).
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
QUICK = os.environ.get("QUICK") == "1"


def env_int(name, default, quick):
    return int(os.environ.get(name, quick if QUICK else default))


ROUNDS = env_int("ROUNDS", 3, 1)
MEMBERS = env_int("MEMBERS", 1, 1)
KEYS = env_int("KEYS", 1_000_000, 20_000)
DURATION = env_int("DURATION", 10, 2)
WATCHERS = env_int("WATCHERS", 1000, 100)
RANGE_KEYS = env_int("RANGE_KEYS", 10_000, 1_000)
LOAD_TXN_OPS = env_int("LOAD_TXN_OPS", 100, 100)
SERVERS = {
    "etcd": os.environ.get("ETCD", "/usr/bin/etcd"),
    "oxetcd": os.environ.get("OXETCD", os.path.join(TARGET, "release", "oxetcd")),
}
BENCH = os.environ.get("BENCH", os.path.join(TARGET, "release", "oxetcd-bench"))
HEALTH_TIMEOUT_S = 300


def log(message):
    print(f"compare: {message}", file=sys.stderr, flush=True)


def free_port(taken):
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port


def healthy(url):
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200 and b'"health":"true"' in r.read()
    except OSError:
        return False


def proc_status(pid, field):
    """A /proc/PID/status field in bytes (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


def du_bytes(path):
    out = subprocess.run(["du", "-sb", path], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0])


class Cluster:
    """MEMBERS members of one server binary on fresh loopback ports under `work`."""

    def __init__(self, name, binary, work, members, extra_args=()):
        self.name, self.binary, self.work = name, binary, work
        self.extra_args = list(extra_args)
        taken = set()
        self.members = []
        for i in range(members):
            self.members.append({
                "name": f"m{i}",
                "client": f"http://127.0.0.1:{free_port(taken)}",
                "peer": f"http://127.0.0.1:{free_port(taken)}",
                "data": os.path.join(work, f"{name}.m{i}.data"),
                "proc": None,
            })
        self.initial = ",".join(f"{m['name']}={m['peer']}" for m in self.members)

    def start_member(self, m):
        args = [
            self.binary, f"--name={m['name']}", f"--data-dir={m['data']}",
            f"--listen-client-urls={m['client']}", f"--advertise-client-urls={m['client']}",
            f"--listen-peer-urls={m['peer']}", f"--initial-advertise-peer-urls={m['peer']}",
            f"--initial-cluster={self.initial}", "--initial-cluster-state=new",
            f"--initial-cluster-token=compare-{self.name}",
            *self.extra_args,
        ]
        log_file = open(os.path.join(self.work, f"{self.name}.{m['name']}.log"), "ab")
        m["proc"] = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, ETCD_UNSUPPORTED_ARCH=""))

    def start(self):
        """Starts every member; returns seconds from exec to every /health OK."""
        started = time.monotonic()
        for m in self.members:
            self.start_member(m)
        while not all(healthy(m["client"]) for m in self.members):
            for m in self.members:
                if m["proc"].poll() is not None:
                    raise RuntimeError(f"{self.name} {m['name']} exited; see {self.work}")
            if time.monotonic() - started > HEALTH_TIMEOUT_S:
                raise RuntimeError(f"{self.name} not healthy in {HEALTH_TIMEOUT_S} s")
            time.sleep(0.01)
        return time.monotonic() - started

    def stop(self):
        for m in self.members:
            if m["proc"] and m["proc"].poll() is None:
                m["proc"].send_signal(signal.SIGTERM)
        for m in self.members:
            if m["proc"]:
                try:
                    m["proc"].wait(timeout=30)
                except subprocess.TimeoutExpired:
                    m["proc"].kill()
                    m["proc"].wait()
                m["proc"] = None

    def pids(self):
        return ",".join(str(m["proc"].pid) for m in self.members)

    def endpoints(self):
        return ",".join(m["client"] for m in self.members)

    def memory(self, field):
        return sum(proc_status(m["proc"].pid, field) for m in self.members)

    def data_bytes(self):
        return sum(du_bytes(m["data"]) for m in self.members)


def bench(cluster, *args):
    """Runs oxetcd-bench against the cluster with --json; returns its summary."""
    cmd = [BENCH, f"--endpoints={cluster.endpoints()}", f"--server-pids={cluster.pids()}",
           "--json", *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
    summary = json.loads(out.stdout)
    if summary["errors"]:
        log(f"warning: {summary['errors']} errors ({summary.get('first_error')}): {' '.join(cmd)}")
    return summary


def load(cluster, keys, clients=16):
    """Puts keys bench/0..keys-1 (256-byte values) in txns of LOAD_TXN_OPS puts."""
    ops = min(LOAD_TXN_OPS, keys)
    bench(cluster, "txn-put", f"--txn-ops={ops}", "--sequential-keys", f"--key-space-size={keys}",
          f"--total={-(-keys // ops)}", f"--clients={clients}", f"--conns={min(clients, 8)}")


def throughput_rows(label, summary):
    """Rows for a throughput run: requests/s, p99, server and bench CPU per request."""
    n = max(summary["requests"], 1)
    return {
        f"{label}: requests/s": summary["requests_per_s"],
        f"{label}: p99 ms": summary["percentiles_s"]["p99"] * 1000,
        f"{label}: server CPU us/request": summary.get("server_cpu_us_per_request", 0.0),
        f"{label}: bench tool CPU us/request": summary["bench_cpu_s"] * 1e6 / n,
    }


def conns(clients):
    return min(clients, 16)


def put_run(clients):
    def run(cluster):
        cluster.start()
        s = bench(cluster, "put", f"--clients={clients}", f"--conns={conns(clients)}",
                  f"--duration={DURATION}", "--key-space-size=100000")
        return throughput_rows(f"{MEMBERS}m put {clients} clients", s)
    return run


def range_run(consistency, clients):
    def run(cluster):
        cluster.start()
        load(cluster, RANGE_KEYS)
        s = bench(cluster, "range", f"--consistency={consistency}", f"--clients={clients}",
                  f"--conns={conns(clients)}", f"--duration={DURATION}",
                  f"--key-space-size={RANGE_KEYS}")
        kind = "linearizable" if consistency == "l" else "serializable"
        return throughput_rows(f"{MEMBERS}m {kind} range {clients} clients", s)
    return run


def txn_run(clients):
    def run(cluster):
        cluster.start()
        s = bench(cluster, "txn-put", f"--clients={clients}", f"--conns={conns(clients)}",
                  f"--duration={DURATION}", "--key-space-size=100000")
        return throughput_rows(f"{MEMBERS}m txn-put {clients} clients", s)
    return run


def watch_run(cluster):
    cluster.start()
    rate = 100
    s = bench(cluster, "watch", f"--watchers={WATCHERS}", "--streams=10", "--conns=10",
              f"--rate={rate}", f"--total={rate * DURATION}", "--key-space-size=1000")
    return {
        f"watch delivery p99 ms, {WATCHERS} watchers, {rate} puts/s": s["percentiles_s"]["p99"] * 1000,
        f"watch events missed, {WATCHERS} watchers": s["errors"],
    }


def big_run(cluster):
    cluster.start()
    load(cluster, KEYS, clients=16)
    rows = {
        f"RSS after loading {KEYS} keys, MiB": cluster.memory("VmRSS") / 2**20,
        f"peak RSS during the load of {KEYS} keys, MiB": cluster.memory("VmHWM") / 2**20,
    }
    s = bench(cluster, "range", "--paginate", "--limit=500", "--clients=1", "--total=200")
    rows[f"paginated list (limit 500) over {KEYS} keys: page p99 ms"] = s["percentiles_s"]["p99"] * 1000
    rows[f"paginated list (limit 500) over {KEYS} keys: page average ms"] = s["average_s"] * 1000
    cluster.stop()
    rows[f"data dir size with {KEYS} keys, MiB"] = cluster.data_bytes() / 2**20
    rows[f"restart to /health with {KEYS} keys, s"] = cluster.start()
    rows[f"RSS after a restart with {KEYS} keys, MiB"] = cluster.memory("VmRSS") / 2**20
    return rows


def workloads():
    if MEMBERS == 1:
        return {
            "put-1": put_run(1),
            "put-64": put_run(64),
            "put-256": put_run(256),
            "range-l-64": range_run("l", 64),
            "range-s-64": range_run("s", 64),
            "watch": watch_run,
            "big": big_run,
        }
    return {
        "put-1": put_run(1),
        "put-64": put_run(64),
        "range-l-64": range_run("l", 64),
        "txn-64": txn_run(64),
    }


def main():
    # SIGTERM unwinds like Ctrl-C, so the servers are stopped and their data removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for name, path in list(SERVERS.items()) + [("oxetcd-bench", BENCH)]:
        if not os.access(path, os.X_OK):
            raise SystemExit(f"{name}: {path} not found (cargo build --release, or set the env)")
    only = set(filter(None, os.environ.get("ONLY", "").split(",")))
    base = os.environ.get("BENCH_DIR", tempfile.gettempdir())
    results = {}  # row -> server -> [values]
    order = []
    log(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; {ROUNDS} rounds, "
        f"{MEMBERS} member(s), KEYS={KEYS}, DURATION={DURATION}s")
    for name, run in workloads().items():
        if only and name not in only:
            continue
        for round_index in range(ROUNDS):
            servers = list(SERVERS.items())
            if round_index % 2:
                servers.reverse()
            for server, binary in servers:
                work = tempfile.mkdtemp(prefix=f"compare-{name}-{server}-", dir=base)
                cluster = Cluster(server, binary, work, MEMBERS)
                try:
                    log(f"{name} round {round_index + 1}/{ROUNDS}: {server}")
                    rows = run(cluster)
                finally:
                    cluster.stop()
                    shutil.rmtree(work, ignore_errors=True)
                for row, value in rows.items():
                    if row not in results:
                        results[row] = {s: [] for s in SERVERS}
                        order.append(row)
                    results[row][server].append(value)
                log(f"  {server}: " + ", ".join(f"{k.split(': ')[-1]}={v:.3g}" for k, v in rows.items()))
    print(f"\n{MEMBERS} member(s), medians of {ROUNDS} round(s); ratio = oxetcd / etcd\n")
    print("| row | etcd 3.4 | oxetcd | ratio |")
    print("|---|---|---|---|")
    for row in order:
        med = {s: statistics.median(v) for s, v in results[row].items() if v}
        if len(med) < 2:
            continue
        ratio = f"{med['oxetcd'] / med['etcd']:.2f}x" if med["etcd"] else "-"
        print(f"| {row} | {med['etcd']:.4g} | {med['oxetcd']:.4g} | {ratio} |")


if __name__ == "__main__":
    main()
