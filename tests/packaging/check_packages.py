#!/usr/bin/env python3
"""Checks the built .deb and .rpm the way an operator meets them.

    tests/packaging/check_packages.py PACKAGE_DIR

PACKAGE_DIR holds what packaging/build.sh made: oxetcd_*.deb and oxetcd-*.rpm. Needs root: it installs the .deb on this machine with dpkg and removes and
purges it again at the end (also when a check fails).

1. lintian: no errors.
2. rpm -qp: file list, config files (noreplace), scriptlets, requirements and provides; then an
   install into a scratch `rpm --root` directory, verified and erased.
3. dpkg -i: files, conffiles, user, directories and the enabled unit; the unit's ExecStart
   line run as systemd would run it (User=, Group=, UMask=, LimitNOFILE=, NOTIFY_SOCKET),
   READY=1 and /health timed, a key written with etcdctl, the log in /var/log/etcd.log,
   logrotate's rotation plus the reload line reopening it, STOPPING=1 and exit 0 on SIGTERM.
4. dpkg -r keeps config, data, log and user; a reinstall keeps an edited conffile and serves
   the old data; dpkg -P deletes config, data and log and keeps the user.
5. The same .deb in a Debian root booted with systemd-nspawn (a real systemd): installed
   enabled and stopped; `systemctl start` returns only when /health is OK; the hardening
   applies (user, open-file limit); logrotate reloads the service; a SIGKILLed server is
   restarted; an upgrade restarts it; stop is clean; a configuration error fails the start
   without a restart loop; remove stops it; purge cleans up. Then
   the .rpm there (its scriptlets under that systemd): user, directories, enabled, starts,
   a reinstall restarts it, and `rpm -e` stops and disables it and keeps the data.
6. Backups there: oxetcd-backup.timer is installed off, `systemctl enable --now` turns it on
   (list-timers shows it), the generator applies [backup] schedule at daemon-reload; the
   service (started by hand) writes a verified snapshot, retention prunes the oldest,
   /metrics reports the newest, and restoring it gives the same keys; then, with a schedule
   every 5 s and the random delay taken out, the timer itself starts a run that is kept.
7. The repositories packaging/repo.sh builds, signed with a throwaway gpg key: the apt one
   served on 127.0.0.1 installs oxetcd in that container with `apt-get install`, and a newer
   build (the same .deb repackaged with a higher version) arrives with `apt-get upgrade`,
   keeping the data and an edited config; the rpm one's repodata lists the .rpm with its
   checksum, and its signature verifies.
"""

import configparser
import glob
import grp
import os
import pwd
import resource
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

UNIT = "/usr/lib/systemd/system/oxetcd.service"
MAN = "/usr/share/man/man1/oxetcd.1"
CONFIG = "/etc/oxetcd/oxetcd.toml"
DATA = "/var/lib/oxetcd"
LOG = "/var/log/etcd.log"
CLIENT = "127.0.0.1:2379"
WANTS_LINK = "/etc/systemd/system/multi-user.target.wants/oxetcd.service"
BACKUP_UNIT = "/usr/lib/systemd/system/oxetcd-backup.service"
BACKUP_TIMER = "/usr/lib/systemd/system/oxetcd-backup.timer"
GENERATOR = "/usr/lib/systemd/system-generators/oxetcd-backup-generator"
BACKUPS = "/var/backups/oxetcd"
HERE = os.path.dirname(os.path.abspath(__file__))

# Every file the packages install, and the ones that are configuration.
FILES = sorted(
    [
        "/usr/bin/oxetcd",
        CONFIG,
        "/etc/logrotate.d/oxetcd",
        UNIT,
        BACKUP_UNIT,
        BACKUP_TIMER,
        GENERATOR,
        "/usr/lib/sysusers.d/oxetcd.conf",
        "/usr/lib/tmpfiles.d/oxetcd.conf",
        "/usr/share/doc/oxetcd/README.md",
        "/usr/share/doc/oxetcd/runbooks.md",
        MAN,
        "/usr/share/oxetcd/prometheus/oxetcd-alerts.yaml",
    ]
    + [
        "/usr/share/oxetcd/grafana/" + os.path.basename(p)
        for p in glob.glob(os.path.join(os.path.dirname(__file__), "../../dashboards/*.json"))
    ]
)
CONFFILES = sorted([CONFIG, "/etc/logrotate.d/oxetcd"])
# cargo-deb gzips man pages, as Debian policy asks; the rpm carries the page as it is.
DEB_FILES = sorted(f + ".gz" if f == MAN else f for f in FILES)

figures = []
# (what, seconds) of the steps that are not service starts.
timings = []


def step(title):
    print(f"== {title}", flush=True)


def run(*argv, check=True, env=None, input=None):
    """Runs a command, returns its stdout; a failure shows the command and its output."""
    p = subprocess.run(argv, capture_output=True, text=True, env=env, input=input)
    if check and p.returncode != 0:
        raise AssertionError(
            f"{shlex.join(argv)} exited {p.returncode}\n{p.stdout}\n{p.stderr}".rstrip()
        )
    return p.stdout


def expect(cond, message):
    if not cond:
        raise AssertionError(message)


def etcdctl(*args):
    env = dict(os.environ, ETCDCTL_API="3")
    return run("etcdctl", f"--endpoints={CLIENT}", "--command-timeout=10s", *args, env=env)


def owner(path):
    st = os.stat(path)
    return (
        pwd.getpwuid(st.st_uid).pw_name,
        grp.getgrgid(st.st_gid).gr_name,
        stat.S_IMODE(st.st_mode),
    )


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


# ---- 1. lintian --------------------------------------------------------------------------


def check_lintian(deb):
    step("lintian: no errors")
    p = subprocess.run(
        ["lintian", "--pedantic", "--fail-on", "error", deb], capture_output=True, text=True
    )
    out = (p.stdout + p.stderr).strip()
    print(out or "no tags")
    errors = [line for line in out.splitlines() if line.startswith("E:")]
    expect(p.returncode == 0 and not errors, f"lintian found errors in {deb}")


# ---- 2. rpm ------------------------------------------------------------------------------


def check_rpm(rpm):
    step("rpm -qp: files, config, scripts, requirements")
    files = sorted(run("rpm", "-qp", "--list", rpm).split())
    expect(files == FILES, f"rpm file list differs:\n got {files}\nwant {FILES}")
    configs = sorted(run("rpm", "-qp", "--configfiles", rpm).split())
    expect(configs == CONFFILES, f"rpm config files: {configs}, want {CONFFILES}")
    # %{FILEFLAGS:fflags}: c = config, n = noreplace, d = doc.
    flags = dict(
        line.split(" ", 1)[::-1]
        for line in run("rpm", "-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]", rpm)
        .strip()
        .splitlines()
        if " " in line
    )
    for conf in CONFFILES:
        expect("n" in flags.get(conf, ""), f"{conf} is not %config(noreplace): {flags.get(conf)}")
    modes = run("rpm", "-qp", "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]", rpm)
    expect("-rwxr-xr-x /usr/bin/oxetcd" in modes, f"binary mode:\n{modes}")
    scripts = run("rpm", "-qp", "--scripts", rpm)
    here = os.path.join(os.path.dirname(__file__), "../../packaging/rpm")
    for name, heading in [
        ("pre.sh", "preinstall"),
        ("post.sh", "postinstall"),
        ("preun.sh", "preuninstall"),
        ("postun.sh", "postuninstall"),
    ]:
        body = open(os.path.join(here, name)).read().strip()
        expect(heading + " scriptlet" in scripts, f"no {heading} scriptlet")
        expect(body in scripts, f"the {heading} scriptlet is not packaging/rpm/{name}")
    requires = run("rpm", "-qp", "--requires", rpm)
    for need in ["logrotate", "/usr/sbin/useradd", "/usr/bin/kill", "libc.so.6", "/bin/sh"]:
        expect(need in requires, f"rpm does not require {need}:\n{requires}")
    provides = run("rpm", "-qp", "--provides", rpm)
    expect("user(oxetcd)" in provides, f"rpm does not provide user(oxetcd):\n{provides}")
    binary_size = int(
        run("rpm", "-qp", "--qf", "[%{FILESIZES} %{FILENAMES}\n]", rpm)
        .split(" /usr/bin/oxetcd")[0]
        .split()[-1]
    )
    expect(binary_size < 64 << 20, f"the rpm's binary is {binary_size} bytes: not stripped?")
    run("rpm", "-Kv", "--nosignature", rpm)

    step("rpm --root: install, verify, erase")
    root = tempfile.mkdtemp(prefix="oxetcd-rpmroot-")
    try:
        run("rpm", "--root", root, "--initdb")
        # Scriptlets run chrooted with the root's /bin/sh, which a scratch root lacks; the
        # scriptlets are checked above and exercised by the .deb's equivalents below.
        run("rpm", "--root", root, "-ivh", "--nodeps", "--noscripts", rpm)
        installed = run("rpm", "--root", root, "-qa").split()
        expect(any(p.startswith("oxetcd-") for p in installed), f"rpm -qa: {installed}")
        for f in FILES:
            expect(os.path.isfile(root + f), f"{f} missing in the rpm root")
        run("rpm", "--root", root, "-V", "--nodeps", "oxetcd")
        out = run(root + "/usr/bin/oxetcd", "--version")
        expect("oxetcd" in out.lower(), f"--version from the rpm's binary: {out}")
        run("rpm", "--root", root, "-e", "--nodeps", "--noscripts", "oxetcd")
        left = [f for f in FILES if os.path.exists(root + f)]
        expect(not left, f"rpm -e left {left}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---- 3. the service, run as systemd runs it ------------------------------------------------


class Service:
    """The installed unit's ExecStart, started as systemd would start it (without systemd)."""

    def __init__(self):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str
        parser.read(UNIT)
        self.unit = parser["Service"]
        expect(self.unit.get("Type") == "notify", "the unit is not Type=notify")
        expect(self.unit.get("Restart") == "on-failure", "the unit does not restart on failure")
        expect(int(self.unit.get("LimitNOFILE", "0")) >= 65536, "the unit keeps the default open-file limit")
        self.tmp = tempfile.mkdtemp(prefix="oxetcd-unit-")
        os.chmod(self.tmp, 0o755)
        self.notify_path = os.path.join(self.tmp, "notify")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        os.chmod(self.notify_path, 0o777)
        self.proc = None

    def start(self):
        user = pwd.getpwnam(self.unit["User"])
        group = grp.getgrnam(self.unit["Group"])
        umask = int(self.unit.get("UMask", "0022"), 8)
        nofile = int(self.unit["LimitNOFILE"])
        argv = shlex.split(self.unit["ExecStart"])
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "HOME": user.pw_dir,
            "USER": user.pw_name,
            "LOGNAME": user.pw_name,
            "SHELL": user.pw_shell,
            "NOTIFY_SOCKET": self.notify_path,
            "STATE_DIRECTORY": DATA,
        }

        nofile = nofile_in_effect(nofile)

        def in_child():
            # systemd's order: limits while still root, then the user's credentials.
            os.umask(umask)
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
            os.initgroups(user.pw_name, group.gr_gid)
            os.setgid(group.gr_gid)
            os.setuid(user.pw_uid)

        self.journal = open(os.path.join(self.tmp, "journal"), "a")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            cwd="/",
            env=env,
            preexec_fn=in_child,
            stdin=subprocess.DEVNULL,
            stdout=self.journal,
            stderr=self.journal,
        )
        timeout = parse_seconds(self.unit.get("TimeoutStartSec", "90s"))
        self.wait_notify("READY=1", timeout)
        limits = open(f"/proc/{self.proc.pid}/limits").read()
        expect(f"Max open files            {nofile}" in limits, f"LimitNOFILE not in effect:\n{limits}")
        ready = time.monotonic() - self.started
        health = self.wait_health(timeout)
        return ready, health

    def wait_notify(self, state, timeout):
        """Waits for `state` on the notify socket; messages sent before the process exited are
        still read after it."""
        deadline = time.monotonic() + timeout
        self.notify.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                msg = self.notify.recv(4096).decode()
            except socket.timeout:
                if self.proc.poll() is not None:
                    break  # exited, and nothing more is queued
                continue
            if state in msg.split("\n"):
                return
        raise AssertionError(
            f"no {state} from the service (exit {self.proc.poll()}); its output:\n{self.output()}"
        )

    def wait_health(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = health_now()
            if status == 200 and '"health":"true"' in body:
                return time.monotonic() - self.started
            time.sleep(0.005)
        raise AssertionError(f"/health never answered healthy: {status} {body}")

    def reload(self):
        """Runs the unit's ExecReload= line with $MAINPID, as `systemctl reload` does."""
        line = self.unit["ExecReload"].replace("$MAINPID", str(self.proc.pid))
        run(*shlex.split(line))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        timeout = parse_seconds(self.unit.get("TimeoutStopSec", "90s"))
        self.wait_notify("STOPPING=1", timeout)
        code = self.proc.wait(timeout)
        expect(code == 0, f"the service exited {code} on SIGTERM:\n{self.output()}")
        self.proc = None

    def output(self):
        self.journal.flush()
        with open(os.path.join(self.tmp, "journal")) as f:
            return f.read()[-4000:]

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self):
        self.kill()
        self.notify.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def health_now():
    """/health once: its status (None when nothing answered) and body."""
    try:
        with urllib.request.urlopen(f"http://{CLIENT}/health", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return None, str(e)


def nofile_in_effect(want):
    """The open-file limit systemd can apply for LimitNOFILE=`want`: `want`, unless this
    machine caps the hard limit below it (even for root), then that cap."""
    probe = subprocess.run(
        [sys.executable, "-c", f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({want}, {want}))"],
        capture_output=True,
    )
    if probe.returncode == 0:
        return want
    print(f"   note: this machine caps the open-file limit below LimitNOFILE={want}")
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def parse_seconds(value):
    value = value.strip()
    for suffix, scale in [("min", 60), ("ms", 0.001), ("s", 1)]:
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * scale
    return float(value)


# ---- 4. dpkg -------------------------------------------------------------------------------


def dpkg_status():
    p = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", "oxetcd"], capture_output=True, text=True
    )
    return p.stdout.strip() if p.returncode == 0 else "not known"


def check_installed_files():
    listed = set(run("dpkg", "-L", "oxetcd").split())
    missing = [f for f in DEB_FILES if f not in listed or not os.path.isfile(f)]
    expect(not missing, f"dpkg -L lacks or the disk lacks: {missing}")
    conffiles = sorted(
        line.split()[0]
        for line in run("dpkg-query", "-W", "-f=${Conffiles}\n", "oxetcd").splitlines()
        if line.strip()
    )
    expect(conffiles == CONFFILES, f"conffiles {conffiles}, want {CONFFILES}")
    expect(user_exists("oxetcd"), "no oxetcd user after install")
    expect(pwd.getpwnam("oxetcd").pw_uid < 1000, "oxetcd is not a system user")
    expect(owner(DATA) == ("oxetcd", "oxetcd", 0o700), f"{DATA}: {owner(DATA)}")
    expect(owner(LOG) == ("oxetcd", "adm", 0o640), f"{LOG}: {owner(LOG)}")
    expect(
        os.path.realpath(WANTS_LINK) == UNIT,
        f"the unit is not enabled: {WANTS_LINK} -> {os.path.realpath(WANTS_LINK)}",
    )
    out = run("/usr/bin/oxetcd", "--help")
    expect("--data-dir" in out, "oxetcd --help does not list --data-dir")


def ready_lines():
    return open(LOG).read().count("ready to serve client requests") if os.path.exists(LOG) else 0


def check_service_run(svc, figures_label):
    before = ready_lines()
    ready, health = svc.start()
    figures.append((figures_label, ready, health))
    print(f"   {figures_label}: READY=1 after {ready * 1000:.0f} ms, /health OK after {health * 1000:.0f} ms")
    for entry in os.listdir(DATA):
        path = os.path.join(DATA, entry)
        expect(owner(path)[0] == "oxetcd", f"{path} is owned by {owner(path)[0]}")
    expect(os.path.isfile(os.path.join(DATA, "CURRENT")), f"no database in {DATA}")
    expect(ready_lines() == before + 1, f"this start wrote no start-up lines to {LOG}")


def check_log_rotation(svc):
    step("logrotate rotates /var/log/etcd.log and the server writes to the new file")
    for old in glob.glob(LOG + ".*"):
        os.remove(old)
    state = os.path.join(svc.tmp, "logrotate.state")
    # Without a running systemd the packaged postrotate signals the process (pidof).
    run("logrotate", "--force", "--state", state, "/etc/logrotate.d/oxetcd")
    expect(os.path.isfile(LOG + ".1"), "logrotate left no etcd.log.1")
    expect("ready to serve client requests" in open(LOG + ".1").read(), "etcd.log.1 lacks the old lines")
    expect(owner(LOG) == ("oxetcd", "adm", 0o640), f"new {LOG}: {owner(LOG)}")
    wait_for(lambda: "reopened the log file" in open(LOG).read(), f"no line in the new {LOG}")
    # systemctl reload: the unit's ExecReload= line.
    before = open(LOG).read().count("reopened the log file")
    svc.reload()
    wait_for(
        lambda: open(LOG).read().count("reopened the log file") > before,
        "ExecReload did not make the server reopen its log",
    )


def wait_for(cond, message, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(message)


def check_deb(deb):
    svc = None
    try:
        step("dpkg -i on this machine (no systemd running)")
        expect(dpkg_status() in ("not known", "un"), f"oxetcd is already installed: {dpkg_status()}")
        with socket.socket() as probe:
            in_use = probe.connect_ex(("127.0.0.1", 2379)) == 0
        expect(not in_use, "something already listens on 127.0.0.1:2379, the packaged client port")
        run("dpkg", "-i", deb)
        expect(dpkg_status() == "ii", f"dpkg status after install: {dpkg_status()}")
        check_installed_files()

        step("the unit's ExecStart as User=oxetcd with the packaged config")
        svc = Service()
        check_service_run(svc, "first start (new data dir)")
        etcdctl("put", "packaged-key", "kept across remove")
        check_log_rotation(svc)
        svc.stop()
        log = open(LOG).read()
        expect("stopped" in log, f"{LOG} lacks the shutdown lines")
        check_service_run(svc, "restart (existing data)")
        svc.stop()

        step("dpkg -r keeps config, data, log and user")
        run("dpkg", "-r", "oxetcd")
        expect(dpkg_status() == "rc", f"dpkg status after remove: {dpkg_status()}")
        expect(not os.path.exists("/usr/bin/oxetcd"), "the binary survived remove")
        expect(not os.path.exists(UNIT), "the unit survived remove")
        for kept in [CONFIG, os.path.join(DATA, "CURRENT"), LOG]:
            expect(os.path.exists(kept), f"remove deleted {kept}")
        expect(user_exists("oxetcd"), "remove deleted the user")

        step("reinstall: an edited conffile stays, the old data is served")
        with open(CONFIG) as f:
            edited = f.read().replace('# name = "default"', 'name = "packaged"', 1)
        expect('name = "packaged"' in edited, "the packaged config has no name key to edit")
        with open(CONFIG, "w") as f:
            f.write(edited)
        run("dpkg", "-i", "--force-confold", deb)
        expect(open(CONFIG).read() == edited, "reinstall replaced the edited config")
        check_service_run(svc, "start after remove and reinstall")
        got = etcdctl("get", "packaged-key", "--print-value-only").strip()
        expect(got == "kept across remove", f"the key written before remove reads {got!r}")
        members = etcdctl("member", "list")
        expect("packaged" in members, f"the edited name is not in use: {members}")

        svc.stop()

        step("dpkg -P deletes config, data and log, keeps the user")
        run("dpkg", "-P", "oxetcd")
        expect(dpkg_status() in ("not known", "un", "pn"), f"status after purge: {dpkg_status()}")
        for gone in [CONFIG, "/etc/oxetcd", DATA, LOG, LOG + ".1", "/etc/logrotate.d/oxetcd"]:
            expect(not os.path.exists(gone), f"purge left {gone}")
        for link in [WANTS_LINK, "/etc/systemd/system/oxetcd.service"]:
            expect(not os.path.lexists(link), f"purge left {link}")
        expect(user_exists("oxetcd"), "purge deleted the user (documented to stay)")
    finally:
        if svc is not None:
            svc.close()
        if dpkg_status() not in ("not known", "un", "pn"):
            subprocess.run(["dpkg", "-P", "oxetcd"], capture_output=True)


# ---- 5. under a real systemd -----------------------------------------------------------------

# What the root holds besides debootstrap's minbase: systemd, the packages' dependencies, and
# rpm to run the .rpm's scriptlets under that systemd too.
ROOT_PACKAGES = "systemd,systemd-sysv,dbus,logrotate,procps,rpm"
ROOT_CACHE = os.path.expanduser(
    f"~/.cache/oxetcd/debian-bookworm-{ROOT_PACKAGES.replace(',', '-')}.tar"
)


class SystemdContainer:
    """A Debian bookworm root booted with systemd-nspawn: a real systemd as its PID 1, sharing
    this machine's network. The root is made once with debootstrap and kept as a tarball in
    ~/.cache/oxetcd; each run unpacks a fresh copy."""

    def __init__(self):
        if not os.path.exists(ROOT_CACHE):
            print("   building the container root with debootstrap (once per machine)", flush=True)
            build = tempfile.mkdtemp(prefix="oxetcd-debootstrap-", dir="/var/tmp")
            try:
                run(
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={ROOT_PACKAGES}",
                    "bookworm",
                    build,
                    "http://deb.debian.org/debian",
                )
                os.makedirs(os.path.dirname(ROOT_CACHE), exist_ok=True)
                run("tar", "-C", build, "-cf", ROOT_CACHE + ".part", ".")
                os.rename(ROOT_CACHE + ".part", ROOT_CACHE)
            finally:
                shutil.rmtree(build, ignore_errors=True)
        self.root = tempfile.mkdtemp(prefix="oxetcd-container-", dir="/var/tmp")
        run("tar", "-C", self.root, "-xf", ROOT_CACHE)
        os.chmod(self.root, 0o755)  # the container's `/`: mkdtemp's 0700 locks its users out
        hosts = os.path.join(self.root, "etc", "hosts")
        if not os.path.exists(hosts):  # debootstrap leaves none; an installed system has one
            with open(hosts, "w") as f:
                f.write("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
        try:
            self.boot()
        except BaseException:
            self.close()
            raise

    def boot(self):
        self.console = open(os.path.join(self.root, "root", "console.log"), "w")
        self.nspawn = subprocess.Popen(
            [
                "systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
                f"--directory={self.root}", "--machine=oxetcd-check",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.console,
            stderr=subprocess.STDOUT,
        )
        self.pid1 = None
        deadline = time.monotonic() + 60
        while self.pid1 is None:
            expect(self.nspawn.poll() is None, f"systemd-nspawn exited: {self.console_log()}")
            expect(time.monotonic() < deadline, f"the container did not boot: {self.console_log()}")
            children = run("pgrep", "-P", str(self.nspawn.pid), check=False).split()
            self.pid1 = int(children[0]) if children else None
            if self.pid1 is not None and open(f"/proc/{self.pid1}/comm").read().strip() != "systemd":
                self.pid1 = None  # nspawn's child before it became the container's systemd
            if self.pid1 is None:
                time.sleep(0.05)
        # Until systemd has opened its private bus, systemctl fails at once; then --wait waits
        # for the boot to finish.
        state = ""
        while not state and time.monotonic() < deadline:
            state = self.sh("timeout 120 systemctl is-system-running --wait", check=False).strip()
            if not state:
                time.sleep(0.05)
        expect(state in ("running", "degraded"), f"the container's systemd is {state!r}")

    def sh(self, command, check=True):
        """Runs a shell command inside the container (all of its namespaces)."""
        return run("nsenter", f"--target={self.pid1}", "--all", "/bin/sh", "-c", command, check=check)

    def show(self, *props):
        out = self.sh("systemctl show oxetcd.service " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines())

    def log(self):
        path = self.root + LOG
        return open(path).read() if os.path.exists(path) else ""

    def console_log(self):
        self.console.flush()
        return open(self.console.name).read()[-3000:]

    def close(self):
        if getattr(self, "nspawn", None) is not None and self.nspawn.poll() is None:
            self.nspawn.terminate()  # nspawn shuts the container's systemd down
            try:
                self.nspawn.wait(60)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait()
        if getattr(self, "console", None) is not None:
            self.console.close()
        shutil.rmtree(self.root, ignore_errors=True)


def timed_start(c, label):
    started = time.monotonic()
    c.sh("systemctl start oxetcd.service")
    took = time.monotonic() - started
    status, body = health_now()  # once, no retry: Type=notify means it is ready now
    expect(
        status == 200 and '"health":"true"' in body,
        f"/health right after systemctl start: {status} {body}\n{c.sh('journalctl -u oxetcd --no-pager | tail -20')}",
    )
    figures.append((label, took, time.monotonic() - started))
    print(f"   {label}: systemctl start returned after {took * 1000:.0f} ms, /health OK at once")


def check_under_systemd(deb, rpm):
    step("under a real systemd (a booted Debian container)")
    c = SystemdContainer()
    try:
        shutil.copy(deb, os.path.join(c.root, "root", "oxetcd.deb"))
        shutil.copy(rpm, os.path.join(c.root, "root", "oxetcd.rpm"))
        c.sh("dpkg -i /root/oxetcd.deb")
        enabled = c.sh("systemctl is-enabled oxetcd.service", check=False).strip()
        active = c.sh("systemctl is-active oxetcd.service", check=False).strip()
        expect((enabled, active) == ("enabled", "inactive"), f"after install: {enabled}, {active}")

        step("systemd: start (Type=notify), log, hardening as applied")
        timed_start(c, "systemctl start, new data dir")
        props = c.show("User", "Type", "LimitNOFILE", "NRestarts", "MainPID")
        expect(props["Type"] == "notify" and props["User"] == "oxetcd", f"unit: {props}")
        main_pid = props["MainPID"]
        limits = c.sh(f"cat /proc/{main_pid}/limits")
        want = nofile_in_effect(int(c.sh("systemctl show -p LimitNOFILE --value oxetcd.service")))
        expect(f"Max open files            {want}" in limits, f"LimitNOFILE not applied:\n{limits}")
        ids = c.sh(f"stat -c '%U %G' /proc/{main_pid}").split()
        expect(ids == ["oxetcd", "oxetcd"], f"the service runs as {ids}")
        expect("ready to serve client requests" in c.log(), f"{LOG} in the container: {c.log()[-2000:]}")
        exposure = c.sh("systemd-analyze security oxetcd.service | tail -1")
        print(f"   live {exposure.strip()}")
        etcdctl("put", "systemd-key", "survives restarts")

        step("systemd: logrotate -> systemctl reload reopens the log")
        c.sh("logrotate --force /etc/logrotate.d/oxetcd")
        wait_for(lambda: "reopened the log file" in c.log(), f"no line in the new {LOG} after rotation")
        rotated = open(c.root + LOG + ".1").read()
        expect("ready to serve client requests" in rotated, "etcd.log.1 lacks the old lines")

        step("systemd: a killed server is restarted (Restart=on-failure)")
        c.sh("systemctl kill --signal=KILL oxetcd.service")
        wait_for(
            lambda: c.show("NRestarts", "ActiveState", "SubState")
            == {"NRestarts": "1", "ActiveState": "active", "SubState": "running"},
            f"not restarted after SIGKILL: {c.show('NRestarts', 'ActiveState', 'SubState')}",
            timeout=30,
        )
        wait_for(lambda: health_now()[0] == 200, "no /health after the automatic restart", timeout=30)
        got = etcdctl("get", "systemd-key", "--print-value-only").strip()
        expect(got == "survives restarts", f"after SIGKILL and restart the key reads {got!r}")

        step("systemd: an upgrade restarts the running service")
        before = c.show("MainPID")["MainPID"]
        c.sh("dpkg -i /root/oxetcd.deb")
        after = c.show("MainPID", "ActiveState")
        expect(after["ActiveState"] == "active", f"after the upgrade: {after}")
        expect(after["MainPID"] != before, f"the upgrade did not restart the service ({before})")
        wait_for(lambda: health_now()[0] == 200, "no /health after the upgrade", timeout=30)

        step("systemd: stop is clean (exit 0, Result=success)")
        c.sh("systemctl stop oxetcd.service")
        result = c.show("Result", "ExecMainStatus", "ActiveState")
        expect(
            result == {"Result": "success", "ExecMainStatus": "0", "ActiveState": "inactive"},
            f"after systemctl stop: {result}",
        )
        timed_start(c, "systemctl start, existing data")

        step("systemd: a configuration error fails the start, is logged, is not retried")
        c.sh(f"systemctl stop oxetcd.service; cp {CONFIG} /root/oxetcd.toml")
        c.sh(f"sed -i '1i no-such-key = 1' {CONFIG}")
        failed = c.sh("systemctl start oxetcd.service 2>&1", check=False)
        expect("failed" in failed, f"systemctl start with a bad config: {failed!r}")
        journal = c.sh("journalctl -u oxetcd.service --no-pager")
        expect('unknown key "no-such-key"' in journal, f"the error is not in the journal:\n{journal[-1500:]}")
        state = c.show("ActiveState", "ExecMainStatus")
        expect(state == {"ActiveState": "failed", "ExecMainStatus": "2"}, f"after a bad config: {state}")
        c.sh(f"cp /root/oxetcd.toml {CONFIG}; systemctl reset-failed oxetcd.service")
        c.sh("systemctl start oxetcd.service")

        started = time.monotonic()
        check_backups(c)
        timings.append(("backup checks (timer, 3 runs, restore)", time.monotonic() - started))
        started = time.monotonic()
        check_apt_repository(c, deb, rpm)
        timings.append(("repository checks (build, install, upgrade)", time.monotonic() - started))

        step("systemd: remove stops the service, purge deletes config, data and log")
        c.sh("dpkg -r oxetcd")
        expect(c.show("ActiveState")["ActiveState"] == "inactive", "remove left the service running")
        expect(os.path.exists(c.root + DATA + "/CURRENT"), "remove deleted the data")
        c.sh("dpkg -P oxetcd")
        for gone in ["/etc/oxetcd", DATA, LOG, WANTS_LINK]:
            expect(not os.path.lexists(c.root + gone), f"purge left {gone} in the container")
        expect(glob.glob(c.root + BACKUPS + "/oxetcd-*.snapshot"), "purge deleted the backups")
        c.sh("getent passwd oxetcd")

        step("systemd: the .rpm's scriptlets (rpm -i, start, reinstall restarts, rpm -e)")
        c.sh("userdel oxetcd && groupdel oxetcd 2>/dev/null; true")
        # --nodeps: this root's rpm database knows none of the Debian packages that provide
        # the requirements; the scriptlets run for real.
        c.sh("rpm -i --nodeps /root/oxetcd.rpm 2>&1")
        c.sh("getent passwd oxetcd")
        expect(owner_in(c, DATA) == "oxetcd oxetcd 700", f"{DATA}: {owner_in(c, DATA)}")
        expect(owner_in(c, LOG) == "oxetcd adm 640", f"{LOG}: {owner_in(c, LOG)}")
        enabled = c.sh("systemctl is-enabled oxetcd.service", check=False).strip()
        active = c.sh("systemctl is-active oxetcd.service", check=False).strip()
        expect((enabled, active) == ("enabled", "inactive"), f"after rpm -i: {enabled}, {active}")
        timed_start(c, "systemctl start, from the .rpm")
        before = c.show("MainPID")["MainPID"]
        c.sh("rpm --reinstall --nodeps /root/oxetcd.rpm 2>&1")
        after = c.show("MainPID", "ActiveState")
        expect(after["ActiveState"] == "active", f"after rpm --reinstall: {after}")
        expect(after["MainPID"] != before, f"rpm --reinstall did not restart the service ({before})")
        c.sh("rpm -e --nodeps oxetcd 2>&1")
        enabled = c.sh("systemctl is-enabled oxetcd.service 2>&1", check=False).strip()
        active = c.sh("systemctl is-active oxetcd.service", check=False).strip()
        expect(active == "inactive", f"rpm -e left the service {active}")
        expect("enabled" not in enabled.split(), f"rpm -e left the service {enabled}")
        expect(os.path.exists(c.root + DATA + "/CURRENT"), "rpm -e deleted the data")
    finally:
        c.close()


# ---- 6. backups under systemd -------------------------------------------------------------


def backup_files(c):
    return sorted(glob.glob(c.root + BACKUPS + "/oxetcd-*.snapshot"))


def scrape(name):
    with urllib.request.urlopen(f"http://{CLIENT}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} on /metrics")


def check_backups(c):
    step("backups: the timer is off until one command turns it on")
    enabled = c.sh("systemctl is-enabled oxetcd-backup.timer", check=False).strip()
    expect(enabled == "disabled", f"oxetcd-backup.timer after install: {enabled}")
    expect(owner_in(c, BACKUPS) == "oxetcd oxetcd 700", f"{BACKUPS}: {owner_in(c, BACKUPS)}")
    # The packaged config's [backup] table is the last one: keys appended land in it.
    with open(c.root + CONFIG, "a") as f:
        f.write('retention = 2\nschedule = "*-*-* 04:05:00"\n')
    c.sh("systemctl daemon-reload")
    c.sh("systemctl enable --now oxetcd-backup.timer")
    timers = c.sh("systemctl list-timers --all --no-pager oxetcd-backup.timer")
    expect("oxetcd-backup.timer" in timers and "oxetcd-backup.service" in timers, f"list-timers:\n{timers}")
    calendar = c.sh("systemctl show -p TimersCalendar --value oxetcd-backup.timer")
    expect("*-*-* 04:05:00" in calendar and "daily" not in calendar.lower(), f"the [backup] schedule is not applied: {calendar}")
    print(f"   {timers.strip().splitlines()[1] if len(timers.strip().splitlines()) > 1 else timers.strip()}")

    step("backups: each run writes a verified snapshot, retention 2 prunes the oldest")
    took = []
    for i in range(3):
        etcdctl("put", f"backup-key-{i}", f"value-{i}")
        started = time.monotonic()
        c.sh("systemctl start oxetcd-backup.service")
        took.append(time.monotonic() - started)
        result = c.sh("systemctl show -p Result --value oxetcd-backup.service").strip()
        expect(result == "success", f"backup run {i}: {result}\n{c.sh('journalctl -u oxetcd-backup --no-pager | tail -20')}")
    journal = c.sh("journalctl -u oxetcd-backup.service --no-pager")
    expect("read back and verified" in journal, f"the run's report is not in the journal:\n{journal[-2000:]}")
    files = backup_files(c)
    expect(len(files) == 2, f"retention 2 after 3 runs: {files}")
    expect(not glob.glob(c.root + BACKUPS + "/.*"), "a partial file was left behind")
    newest = files[-1]
    size = os.path.getsize(newest)
    expect(owner_in(c, newest[len(c.root):]) == "oxetcd oxetcd 600", f"{newest}: {owner_in(c, newest[len(c.root):])}")
    expect(scrape("oxetcd_backup_last_size_bytes") == size, "/metrics does not report the newest backup's size")
    written = int(os.stat(newest).st_mtime)
    expect(scrape("oxetcd_backup_last_success_timestamp_seconds") == written, "/metrics does not report the newest backup's time")
    timings.append(("slowest oxetcd-backup.service run (systemctl start)", max(took)))
    print(f"   runs took {', '.join(f'{t * 1000:.0f} ms' for t in took)}; newest {os.path.basename(newest)}, {size} bytes")

    step("backups: the newest restores to the same keys")
    tmp = tempfile.mkdtemp(prefix="oxetcd-restore-")
    server = None
    try:
        binary = c.root + "/usr/bin/oxetcd"
        client_port, peer_port = free_port(), free_port()
        peer = f"http://127.0.0.1:{peer_port}"
        client = f"http://127.0.0.1:{client_port}"
        run(binary, "snapshot", "restore", newest, "--data-dir", tmp + "/data", "--name", "drill",
            "--initial-cluster", f"drill={peer}", "--initial-advertise-peer-urls", peer)
        server = subprocess.Popen(
            [binary, "--data-dir", tmp + "/data", "--name", "drill", "--listen-client-urls", client,
             "--advertise-client-urls", client, "--listen-peer-urls", peer],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        env = dict(os.environ, ETCDCTL_API="3")
        get = ["etcdctl", f"--endpoints={client}", "--command-timeout=5s", "get", "backup-key-", "--prefix", "--print-value-only"]
        wait_for(lambda: subprocess.run(get, capture_output=True, env=env).returncode == 0, "the restored member never answered", timeout=30)
        got = run(*get, env=env).split()
        expect(got == ["value-0", "value-1", "value-2"], f"the restored member holds {got}")
        want = etcdctl("get", "", "--prefix", "--keys-only").split()
        have = run("etcdctl", f"--endpoints={client}", "get", "", "--prefix", "--keys-only", env=env).split()
        expect(have == want, f"restored keys {have} differ from the member's {want}")
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    step("backups: the timer fires on the [backup] schedule and the run it starts is kept")
    # The schedule comes from [backup] through the generator, as in production. The shipped
    # timer spreads runs over RandomizedDelaySec=5min (and systemd's AccuracySec=1min); a
    # runtime drop-in takes those out so the clock is waited on for seconds, not minutes.
    with open(c.root + CONFIG) as f:
        config = f.read()
    with open(c.root + CONFIG, "w") as f:
        f.write(config.replace('schedule = "*-*-* 04:05:00"', 'schedule = "*:*:0/5"'))
    dropin_dir = c.root + "/etc/systemd/system/oxetcd-backup.timer.d"
    os.makedirs(dropin_dir, exist_ok=True)
    with open(dropin_dir + "/99-check-now.conf", "w") as f:
        f.write("[Timer]\nRandomizedDelaySec=0\nAccuracySec=1s\n")
    last_manual = backup_files(c)[-1]
    started = time.monotonic()
    c.sh("systemctl daemon-reload")
    c.sh("systemctl restart oxetcd-backup.timer")
    calendar = c.sh("systemctl show -p TimersCalendar --value oxetcd-backup.timer")
    expect("*-*-* *:*:00/5" in calendar, f"the new schedule is not applied: {calendar}")

    def fired():
        trigger = c.sh("systemctl show -p LastTriggerUSec --value oxetcd-backup.timer").strip()
        files = backup_files(c)
        return trigger not in ("", "n/a", "0") and files and files[-1] > last_manual

    wait_for(fired, "the timer did not start a backup within 60 s", timeout=60)
    fired_after = time.monotonic() - started
    # Back to a daily schedule before looking, so no run starts while the files are counted.
    with open(c.root + CONFIG, "w") as f:
        f.write(config)
    os.remove(dropin_dir + "/99-check-now.conf")
    c.sh("systemctl daemon-reload")
    c.sh("systemctl restart oxetcd-backup.timer")
    wait_for(lambda: c.sh("systemctl is-active oxetcd-backup.service", check=False).strip() != "activating",
             "a timer-started backup run did not finish", timeout=60)
    result = c.sh("systemctl show -p Result --value oxetcd-backup.service").strip()
    expect(result == "success", f"the timer's run: {result}")
    files = backup_files(c)
    expect(len(files) == 2, f"retention 2 after the timer's runs: {files}")
    timings.append(("backup timer: restart to a timer-started snapshot", fired_after))
    print(f"   the timer's run wrote {os.path.basename(files[-1])} {fired_after:.1f} s after the timer restarted")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- 7. the package repositories -------------------------------------------------------------


def repackaged_newer(deb, workdir):
    """The same .deb with a higher version: a newer build without compiling again."""
    tree = os.path.join(workdir, "tree")
    run("dpkg-deb", "-R", deb, tree)
    control = os.path.join(tree, "DEBIAN", "control")
    text = open(control).read()
    version = next(l.split(": ", 1)[1] for l in text.splitlines() if l.startswith("Version: "))
    newer = version + "+rebuild1"
    with open(control, "w") as f:
        f.write(text.replace(f"Version: {version}\n", f"Version: {newer}\n"))
    out = os.path.join(workdir, f"oxetcd_{newer}_amd64.deb")
    run("dpkg-deb", "--root-owner-group", "-Zxz", "-b", tree, out)
    shutil.rmtree(tree)
    return version, newer, out


def build_repo(pkgdir, out, gnupg, key):
    run("bash", os.path.join(HERE, "../../packaging/repo.sh"), pkgdir, out, key,
        env=dict(os.environ, GNUPGHOME=gnupg))


def check_apt_repository(c, deb, rpm):
    step("repository: signed apt and rpm repositories from packaging/repo.sh")
    work = tempfile.mkdtemp(prefix="oxetcd-repo-")
    httpd = None
    try:
        gnupg = os.path.join(work, "gnupg")
        os.mkdir(gnupg, 0o700)
        genv = dict(os.environ, GNUPGHOME=gnupg)
        run("gpg", "--batch", "--passphrase", "", "--quick-gen-key",
            "oxetcd package check <check@example.invalid>", "ed25519", "sign", "1d", env=genv)
        key = next(l.split(":")[9] for l in run("gpg", "--batch", "--with-colons", "--list-secret-keys", env=genv).splitlines() if l.startswith("fpr:"))
        pkgs = os.path.join(work, "pkgs")
        os.mkdir(pkgs)
        shutil.copy(deb, pkgs)
        shutil.copy(rpm, pkgs)
        repo = os.path.join(work, "repo")
        started = time.monotonic()
        build_repo(pkgs, repo, gnupg, key)
        timings.append(("packaging/repo.sh (apt + rpm, signed)", time.monotonic() - started))
        run("gpgv", "--keyring", os.path.join(repo, "apt/oxetcd-archive-keyring.gpg"),
            os.path.join(repo, "apt/dists/stable/InRelease"))
        check_rpm_repodata(repo, rpm, genv)

        port = free_port()
        httpd = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", repo, str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/apt/dists/stable/InRelease"), "the repository is not served")

        step("repository: apt-get install oxetcd from the repository on 127.0.0.1")
        c.sh("systemctl stop oxetcd.service; dpkg -P oxetcd")
        # Only this repository: the container's Debian mirror is not needed (the dependencies
        # are installed) and not reachable everywhere.
        for f in glob.glob(c.root + "/etc/apt/sources.list") + glob.glob(c.root + "/etc/apt/sources.list.d/*"):
            os.remove(f)
        shutil.copy(os.path.join(repo, "apt/oxetcd-archive-keyring.gpg"), c.root + "/usr/share/keyrings/oxetcd-archive-keyring.gpg")
        with open(c.root + "/etc/apt/sources.list.d/oxetcd.sources", "w") as f:
            f.write(f"Types: deb\nURIs: http://127.0.0.1:{port}/apt\nSuites: stable\nComponents: main\n"
                    "Signed-By: /usr/share/keyrings/oxetcd-archive-keyring.gpg\n")
        apt = "DEBIAN_FRONTEND=noninteractive apt-get -q -y"
        c.sh(f"{apt} update 2>&1")
        c.sh(f"{apt} install oxetcd 2>&1")
        version, newer, newer_deb = repackaged_newer(deb, work)
        got = c.sh("dpkg-query -W -f='${Version}' oxetcd")
        expect(got == version, f"apt-get install gave {got}, want {version}")
        with open(c.root + CONFIG) as f:
            edited = f.read().replace("# snapshot-count = 10000", "snapshot-count = 20000", 1)
        expect("snapshot-count = 20000" in edited, "no snapshot-count key to edit")
        with open(c.root + CONFIG, "w") as f:
            f.write(edited)
        timed_start(c, "systemctl start, installed with apt-get")
        etcdctl("put", "apt-key", "kept across the upgrade")
        before = c.show("MainPID")["MainPID"]

        step("repository: a newer build arrives with apt-get upgrade, data and edited config kept")
        shutil.copy(newer_deb, pkgs)
        build_repo(pkgs, repo, gnupg, key)
        c.sh(f"{apt} update 2>&1")
        upgraded = c.sh(f"{apt} upgrade 2>&1")
        got = c.sh("dpkg-query -W -f='${Version}' oxetcd")
        expect(got == newer, f"after apt-get upgrade: {got}, want {newer}\n{upgraded}")
        expect(open(c.root + CONFIG).read() == edited, "apt-get upgrade replaced the edited config")
        after = c.show("MainPID", "ActiveState")
        expect(after["ActiveState"] == "active" and after["MainPID"] != before, f"the upgrade did not restart the service: {after}")
        wait_for(lambda: health_now()[0] == 200, "no /health after apt-get upgrade", timeout=30)
        got = etcdctl("get", "apt-key", "--print-value-only").strip()
        expect(got == "kept across the upgrade", f"after apt-get upgrade the key reads {got!r}")
        print(f"   {version} -> {newer} with apt-get upgrade; key and edited config kept")
    finally:
        if httpd is not None:
            httpd.kill()
            httpd.wait()
        subprocess.run(["gpgconf", "--kill", "all"], env=dict(os.environ, GNUPGHOME=os.path.join(work, "gnupg")), capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def check_rpm_repodata(repo, rpm, genv):
    """dnf is not on Debian: repomd.xml must list primary.xml, whose entry for the .rpm carries
    the .rpm's SHA-256; the detached signature verifies with the exported key."""
    import gzip
    import hashlib
    import xml.etree.ElementTree as ET

    rpmdir = os.path.join(repo, "rpm")
    ns = {"repo": "http://linux.duke.edu/metadata/repo", "common": "http://linux.duke.edu/metadata/common"}
    repomd = ET.parse(os.path.join(rpmdir, "repodata/repomd.xml"))
    primary = repomd.find("repo:data[@type='primary']/repo:location", ns)
    expect(primary is not None, "repomd.xml lists no primary metadata")
    with gzip.open(os.path.join(rpmdir, primary.get("href"))) as f:
        packages = ET.parse(f).findall("common:package", ns)
    names = [(p.find("common:name", ns).text, p.find("common:location", ns).get("href")) for p in packages]
    expect(names == [("oxetcd", os.path.basename(rpm))], f"primary.xml lists {names}")
    checksum = packages[0].find("common:checksum", ns)
    want = hashlib.sha256(open(rpm, "rb").read()).hexdigest()
    expect(checksum.get("type") == "sha256" and checksum.text == want, f"primary.xml checksum {checksum.text}, the .rpm's {want}")
    verify_home = os.path.join(os.path.dirname(repo), "verify")
    os.mkdir(verify_home, 0o700)
    venv = dict(os.environ, GNUPGHOME=verify_home)
    run("gpg", "--batch", "--import", os.path.join(rpmdir, "RPM-GPG-KEY-oxetcd"), env=venv)
    run("gpg", "--batch", "--verify", os.path.join(rpmdir, "repodata/repomd.xml.asc"),
        os.path.join(rpmdir, "repodata/repomd.xml"), env=venv)
    subprocess.run(["gpgconf", "--kill", "all"], env=venv, capture_output=True)


def owner_in(c, path):
    return c.sh(f"stat -c '%U %G %a' {path}").strip()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    pkgdir = sys.argv[1]
    expect(os.geteuid() == 0, "installing the .deb needs root")

    def one(pattern):
        found = glob.glob(os.path.join(pkgdir, pattern))
        expect(len(found) == 1, f"want one {pattern} in {pkgdir}, found {found}")
        return found[0]

    deb, rpm = one("oxetcd_*.deb"), one("oxetcd-*.rpm")
    check_lintian(deb)
    check_rpm(rpm)
    check_deb(deb)
    check_under_systemd(deb, rpm)

    step("figures")
    for p in (deb, rpm):
        print(f"   {os.path.basename(p)}: {os.path.getsize(p) / 1e6:.1f} MB")
    for label, ready, health in figures:
        print(f"   {label}: start -> ready {ready * 1000:.0f} ms, -> /health OK {health * 1000:.0f} ms")
    for label, took in timings:
        print(f"   {label}: {took:.1f} s")
    print("all package checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
