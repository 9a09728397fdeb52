#!/usr/bin/env python3
"""Time from starting the server to READY=1 and to /health OK, oxetcd against etcd.

    tests/bench/start-to-health.py [OXETCD_BINARY] [RUNS]

Starts each server as systemd starts a Type=notify service (NOTIFY_SOCKET set), on a new data
directory and again on the data it left, RUNS times each (default 10), alternating oxetcd and
Debian's /usr/bin/etcd, and prints the medians and their ratio. Loopback ports 23790/23800.
"""

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

CLIENT = "http://127.0.0.1:23790"
PEER = "http://127.0.0.1:23800"


def start_and_time(binary, data_dir, tmp):
    notify_path = os.path.join(tmp, "notify")
    if os.path.exists(notify_path):
        os.remove(notify_path)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    args = [
        binary,
        "--name=bench",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={CLIENT}",
        f"--advertise-client-urls={CLIENT}",
        f"--listen-peer-urls={PEER}",
        f"--initial-advertise-peer-urls={PEER}",
        f"--initial-cluster=bench={PEER}",
    ]
    env = dict(os.environ, NOTIFY_SOCKET=notify_path, ETCD_UNSUPPORTED_ARCH="")
    started = time.monotonic()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        notify.settimeout(30)
        while b"READY=1" not in notify.recv(4096).split(b"\n"):
            pass
        ready = time.monotonic() - started
        while True:
            try:
                with urllib.request.urlopen(CLIENT + "/health", timeout=2) as r:
                    if r.status == 200 and b'"health":"true"' in r.read():
                        break
            except OSError:
                pass
            if time.monotonic() - started > 30:
                raise SystemExit(f"{binary}: /health not OK within 30 s")
            time.sleep(0.002)
        health = time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait()
        notify.close()
    return ready, health


def main():
    oxetcd = sys.argv[1] if len(sys.argv) > 1 else "target/release/oxetcd"
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    servers = {"oxetcd": os.path.abspath(oxetcd), "etcd": "/usr/bin/etcd"}
    results = {(name, kind): [] for name in servers for kind in ("new", "restart")}
    tmp = tempfile.mkdtemp(prefix="start-to-health-")
    try:
        for _ in range(runs):
            for name, binary in servers.items():
                data = os.path.join(tmp, name)
                shutil.rmtree(data, ignore_errors=True)
                results[(name, "new")].append(start_and_time(binary, data, tmp))
                results[(name, "restart")].append(start_and_time(binary, data, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for kind in ("new", "restart"):
        line = [f"{kind:8}"]
        medians = {}
        for name in servers:
            ready = statistics.median(r for r, _ in results[(name, kind)]) * 1000
            health = statistics.median(h for _, h in results[(name, kind)]) * 1000
            medians[name] = health
            line.append(f"{name}: READY=1 {ready:.0f} ms, /health OK {health:.0f} ms")
        line.append(f"ratio oxetcd/etcd (/health) {medians['oxetcd'] / medians['etcd']:.2f}x")
        print(" | ".join(line))


if __name__ == "__main__":
    main()
