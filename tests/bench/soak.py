#!/usr/bin/env python3
"""Resident memory of one server over a long mixed load: does it stay flat?

    tests/bench/soak.py [oxetcd|etcd]      (a manual benchmark: CI does not run it)

Starts one member (oxetcd by default, or Debian's etcd with the same flags) on a fresh data
directory with periodic auto-compaction keeping
COMPACT_RETENTION of history, as a long-running cluster would be configured. Loads KEYS keys,
then runs for MINUTES at once: a mixed load (puts and linearizable gets, 50/50, over the loaded
key space at RATE requests/s), WATCHERS watchers on a prefix that takes puts at WATCH_RATE, and
LEASES clients that each grant a lease and keep it alive. Every SAMPLE_S seconds it prints
VmRSS, and at the end the first and last samples after the load, the largest, and the slope of
a least-squares line through the samples of the second half (MB per 10 minutes): flat means a
slope near zero, not a figure below some bound.

Env: MINUTES (30), KEYS (100000), RATE (2000), WATCH_RATE (50), WATCHERS (100), LEASES (16),
COMPACT_RETENTION (1m), SAMPLE_S (30), BENCH_DIR, and compare.py's ETCD, OXETCD, BENCH.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (Cluster, bench, load, proc_status, the binaries' paths)

MINUTES = float(os.environ.get("MINUTES", 30))
KEYS = int(os.environ.get("KEYS", 100_000))
RATE = int(os.environ.get("RATE", 2000))
WATCH_RATE = int(os.environ.get("WATCH_RATE", 50))
WATCHERS = int(os.environ.get("WATCHERS", 100))
LEASES = int(os.environ.get("LEASES", 16))
COMPACT_RETENTION = os.environ.get("COMPACT_RETENTION", "1m")
SAMPLE_S = float(os.environ.get("SAMPLE_S", 30))


def log(message):
    print(f"soak: {message}", file=sys.stderr, flush=True)


def slope_mb_per_10min(samples):
    """Least-squares slope of (seconds, bytes) samples, in MB per 10 minutes."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_b = sum(b for _, b in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (b - mean_b) for t, b in samples)
    return cov / var * 600 / 1e6


def main():
    server = sys.argv[1] if len(sys.argv) > 1 else "oxetcd"
    binary = compare.SERVERS[server]
    base = os.environ.get("BENCH_DIR", tempfile.gettempdir())
    work = tempfile.mkdtemp(prefix=f"soak-{server}-", dir=base)
    # Periodic auto-compaction, as a long-running member is configured.
    cluster = compare.Cluster(server, binary, work, 1, [
        "--auto-compaction-mode=periodic", f"--auto-compaction-retention={COMPACT_RETENTION}"])
    procs = []
    try:
        cluster.start()
        log(f"{server} pid {cluster.pids()}; loading {KEYS} keys")
        compare.load(cluster, KEYS)
        rss_loaded = cluster.memory("VmRSS")
        log(f"loaded: VmRSS {rss_loaded / 1e6:.0f} MB")
        seconds = int(MINUTES * 60)
        common = [compare.BENCH, f"--endpoints={cluster.endpoints()}", "--json",
                  f"--duration={seconds}"]
        procs = [
            subprocess.Popen(common + ["--clients=16", "--conns=4", f"--rate={RATE}",
                                       f"--key-space-size={KEYS}", "mixed", "--read-ratio=0.5"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            subprocess.Popen(common + ["--clients=1", "--conns=4", f"--rate={WATCH_RATE}",
                                       "--prefix-key=soakwatch/", "watch", f"--watchers={WATCHERS}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            subprocess.Popen(common + [f"--clients={LEASES}", "--prefix-key=soaklease/", "--conns=2", "--rate=50",
                                       "lease-keepalive"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        ]
        started = time.monotonic()
        samples = []
        while any(p.poll() is None for p in procs):
            time.sleep(SAMPLE_S)
            t = time.monotonic() - started
            rss = cluster.memory("VmRSS")
            samples.append((t, rss))
            log(f"{t / 60:5.1f} min: VmRSS {rss / 1e6:.0f} MB")
        if not samples:
            raise SystemExit("soak: the load ended before the first sample; run the bench "
                             "commands by hand to see why")
        failed = [p.args[-1] for p in procs if p.returncode != 0]
        if failed:
            log(f"warning: bench runs exited non-zero: {failed}")
        half = [s for s in samples if s[0] >= seconds / 2]
        print(f"\n{server}, {MINUTES:g} min soak after loading {KEYS} keys "
              f"(mixed {RATE}/s, {WATCHERS} watchers, {LEASES} leases, "
              f"auto-compaction {COMPACT_RETENTION})")
        print(f"VmRSS after load {rss_loaded / 1e6:.0f} MB; first sample "
              f"{samples[0][1] / 1e6:.0f} MB; last {samples[-1][1] / 1e6:.0f} MB; "
              f"max {max(b for _, b in samples) / 1e6:.0f} MB; VmHWM "
              f"{cluster.memory('VmHWM') / 1e6:.0f} MB; second-half slope "
              f"{slope_mb_per_10min(half):+.1f} MB/10 min")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
