#!/usr/bin/env python3
"""Time from starting the server to READY=1 and to /health OK, oxetcd against etcd.

    tests/bench/start-to-health.py [--tls] [OXETCD_BINARY] [RUNS]

Starts each server as systemd starts a Type=notify service (NOTIFY_SOCKET set), on a new data
directory and again on the data it left, RUNS times each (default 10), alternating oxetcd and
Debian's /usr/bin/etcd, and prints the medians and their ratio. Loopback ports 23790/23800.

With --tls both the client and the peer URL are https:// with mutual TLS (kubeadm's flags:
--client-cert-auth, --peer-client-cert-auth, one CA made here with openssl), and /health is
asked over https with a client certificate.
"""

import os
import shutil
import ssl
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

CLIENT = "http://127.0.0.1:23790"
PEER = "http://127.0.0.1:23800"


def make_pki(tmp):
    """A CA, a server/peer pair for 127.0.0.1 and a client pair, with openssl; returns paths."""
    pki = os.path.join(tmp, "pki")
    os.makedirs(pki)

    def run(*args):
        subprocess.run(args, cwd=pki, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("openssl", "req", "-x509", *ec, "-days", "2", "-subj", "/CN=bench-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    for name, ext in [
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "extendedKeyUsage=serverAuth,clientAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ]:
        with open(os.path.join(pki, f"{name}.ext"), "w") as f:
            f.write(ext)
        run("openssl", "req", *ec, "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")
    return {name: os.path.join(pki, name) for name in
            ["ca.crt", "server.crt", "server.key", "client.crt", "client.key"]}


def tls_args(pki):
    return [
        f"--cert-file={pki['server.crt']}", f"--key-file={pki['server.key']}",
        f"--trusted-ca-file={pki['ca.crt']}", "--client-cert-auth=true",
        f"--peer-cert-file={pki['server.crt']}", f"--peer-key-file={pki['server.key']}",
        f"--peer-trusted-ca-file={pki['ca.crt']}", "--peer-client-cert-auth=true",
    ]


def https_context(pki):
    context = ssl.create_default_context(cafile=pki["ca.crt"])
    context.load_cert_chain(pki["client.crt"], pki["client.key"])
    return context


def start_and_time(binary, data_dir, tmp, pki=None):
    notify_path = os.path.join(tmp, "notify")
    if os.path.exists(notify_path):
        os.remove(notify_path)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    scheme = "https" if pki else "http"
    client = CLIENT.replace("http", scheme, 1)
    peer = PEER.replace("http", scheme, 1)
    args = [
        binary,
        "--name=bench",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=bench={peer}",
    ] + (tls_args(pki) if pki else [])
    context = https_context(pki) if pki else None
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
                with urllib.request.urlopen(client + "/health", timeout=2,
                                            context=context) as r:
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
    argv = sys.argv[1:]
    tls = "--tls" in argv
    argv = [a for a in argv if a != "--tls"]
    oxetcd = argv[0] if len(argv) > 0 else "target/release/oxetcd"
    runs = int(argv[1]) if len(argv) > 1 else 10
    servers = {"oxetcd": os.path.abspath(oxetcd), "etcd": "/usr/bin/etcd"}
    results = {(name, kind): [] for name in servers for kind in ("new", "restart")}
    tmp = tempfile.mkdtemp(prefix="start-to-health-")
    pki = make_pki(tmp) if tls else None
    try:
        for _ in range(runs):
            for name, binary in servers.items():
                data = os.path.join(tmp, name)
                shutil.rmtree(data, ignore_errors=True)
                results[(name, "new")].append(start_and_time(binary, data, tmp, pki))
                results[(name, "restart")].append(start_and_time(binary, data, tmp, pki))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for kind in ("new", "restart"):
        line = [f"{kind + (' tls' if tls else ''):12}"]
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
