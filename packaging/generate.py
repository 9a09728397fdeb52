#!/usr/bin/env python3
"""Generates packaging/oxetcd.toml (the packaged config) and packaging/oxetcd.1 (the man page)
from `oxetcd --help`, the one place every configuration key, its help and its default are shown.

    packaging/generate.py [--binary PATH]          rewrite both files
    packaging/generate.py [--binary PATH] --check  exit 1 if either file is stale (for CI)

The binary defaults to $CARGO_TARGET_DIR/release/oxetcd, else target/release/oxetcd.
"""

import argparse
import datetime
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Keys the packaged config sets (the rest stay commented out at their defaults).
PACKAGED = {"data-dir": "/var/lib/oxetcd"}
# Keys spelled in the `[log]` table of the config file, as (table key, flag name).
LOG_TABLE = [("file", "log-outputs"), ("level", "log-level"), ("format", "log-format")]
PACKAGED_LOG = {"file": "/var/log/etcd.log"}
# The [backup] table (src/config/backup.rs): read by `oxetcd backup`, which
# oxetcd-backup.timer runs, and by the server for its oxetcd_backup_* metrics. Its keys have no
# flags, so they are not in --help; the defaults here are BackupConfig's.
BACKUP_TABLE = [
    "# ---- Backups " + "-" * 77,
    "# oxetcd-backup.timer (off by default: `systemctl enable --now oxetcd-backup.timer`) runs",
    "# `oxetcd backup`, which saves a snapshot from `endpoint` into `directory`, reads it back and",
    "# checks its CRC, and keeps the newest `retention` files. After changing `schedule`, run",
    "# `systemctl daemon-reload`; the other keys apply at the next run.",
    "[backup]",
    "",
    "# Directory the backups are written to (oxetcd-<UTC time>.snapshot).",
    '# directory = "/var/backups/oxetcd"',
    "",
    "# When the timer runs a backup: a systemd calendar expression (man systemd.time).",
    '# schedule = "daily"',
    "",
    "# How many backups to keep, newest first.",
    "# retention = 7",
    "",
    "# Client URL of the member to back up (http:// or https://).",
    '# endpoint = "http://127.0.0.1:2379"',
    "",
    "# For an https:// endpoint: CA certificates to verify it with, and a client certificate and",
    "# key when the member asks for one (--client-cert-auth).",
    '# cacert = ""',
    '# cert = ""',
    '# key = ""',
    "",
    "# Age of the newest backup past which the OxetcdBackupTooOld alert fires (the server exports",
    "# it as oxetcd_backup_max_age_seconds).",
    '# max-age = "26h"',
]
# Options of --help that are not configuration keys.
NOT_KEYS = {"config-file", "help", "version"}

OPTION = re.compile(r"^\s+(?:-\w, )?--([a-z0-9-]+)(\[=<(\w+)>\]| <(\w+)>)?(?:\s{2,}(.*))?$")
DEFAULT = re.compile(r"\s*\[default: (.*)\]$")


def parse_help(text):
    """Returns (sections, footer): sections is [(title, [key dict])], in --help order."""
    sections, current, pending, footer = [], None, None, []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if not line.strip():
            pending = None
            continue
        if not line.startswith(" "):
            if line.endswith(":") and not line.startswith("Usage"):
                current = (line[:-1], [])
                sections.append(current)
            elif current is not None and current[0] not in ("Commands",):
                footer.append(line)
            continue
        match = OPTION.match(line)
        if match:
            name, _, bool_value, value_name, help_text = match.groups()
            pending = {"name": name, "value": bool_value or value_name or "", "help": help_text or ""}
            if current is not None and name not in NOT_KEYS:
                current[1].append(pending)
            continue
        if pending is not None and not pending["help"]:
            pending["help"] = line.strip()
    keys = []
    for title, entries in sections:
        for entry in entries:
            found = DEFAULT.search(entry["help"])
            if not found:
                raise SystemExit(f"--{entry['name']} shows no [default: ...] in --help")
            entry["default"] = found.group(1)
            entry["help"] = entry["help"][: found.start()].rstrip()
        keys.append((title, entries))
    return [(title, entries) for title, entries in keys if entries], footer


def toml_value(entry, text):
    kind = entry["value"]
    if kind == "BOOL" and text in ("true", "false"):
        return text
    if kind == "NUMBER" and re.fullmatch(r"-?\d+", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sentence(text):
    return text if text.endswith(".") else text + "."


def comment(text):
    return ["# " + line for line in textwrap.wrap(text, 94, break_on_hyphens=False)]


def commented_default(entry):
    default = entry["default"]
    if "${" in default:
        return f'# {entry["name"]} = ""      (empty: derived as {default})'
    if default == "none":
        return f'# {entry["name"]} = ""'
    return f"# {entry['name']} = {toml_value(entry, default)}"


def render_toml(sections):
    by_name = {entry["name"]: entry for _, entries in sections for entry in entries}
    out = [
        "# /etc/oxetcd/oxetcd.toml: configuration of the oxetcd service.",
        "#",
        "# Generated by packaging/generate.py from `oxetcd --help`; do not edit in the source tree.",
        "# Every key is listed with its help and, commented out, its default. Keys are the flag",
        "# names without `--` (`data_dir` works as well as `data-dir`). ETCD_* environment",
        "# variables (for example in a `systemctl edit oxetcd` drop-in) override this file, and",
        "# flags override both. Changes take effect at the next `systemctl restart oxetcd`;",
        "# `systemctl reload oxetcd` only reopens the log file.",
        "#",
        "# Values set below differ from the defaults for the packaged service: data in",
        "# /var/lib/oxetcd, log in /var/log/etcd.log (see the [log] table at the end). Out of the",
        "# box the server listens on loopback only; set the URLs to serve other hosts.",
    ]
    log_flags = {flag for _, flag in LOG_TABLE}
    for title, entries in sections:
        entries = [entry for entry in entries if entry["name"] not in log_flags]
        if not entries:
            continue
        out += ["", f"# ---- {title} " + "-" * max(0, 84 - len(title))]
        for entry in entries:
            name = entry["name"]
            out += [""] + comment(sentence(entry["help"]))
            out.append(commented_default(entry))
            if name in PACKAGED:
                out.append(f"{name} = {toml_value(entry, PACKAGED[name])}")
    out += [
        "",
        "# ---- Logging " + "-" * 77,
        "# The [log] table spells log-outputs, log-level and log-format as file, level and format;",
        "# set each in one place only (here, or at top level above the table).",
        "[log]",
    ]
    for table_key, flag in LOG_TABLE:
        entry = by_name[flag]
        out += [""] + comment(f"{entry['help']} (flag --{flag}).")
        out.append(f"# {table_key} = {toml_value(entry, entry['default'])}")
        if table_key in PACKAGED_LOG:
            out.append(f"{table_key} = {toml_value(entry, PACKAGED_LOG[table_key])}")
    out += [""] + BACKUP_TABLE
    return "\n".join(out) + "\n"


def roff(text):
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return ("\\&" + text) if text.startswith((".", "'")) else text


def render_man(sections, footer, version):
    out = [
        '.\\" Generated by packaging/generate.py from `oxetcd --help`; do not edit.',
        f'.TH OXETCD 1 "" "oxetcd {version}" "User Commands"',
        ".SH NAME",
        "oxetcd \\- etcd v3 compatible, strongly consistent key\\-value store",
        ".SH SYNOPSIS",
        ".B oxetcd",
        "[\\fIOPTIONS\\fR]",
        ".br",
        ".B oxetcd snapshot",
        "\\fICOMMAND\\fR ...",
        ".br",
        ".B oxetcd backup",
        "[\\fB\\-\\-config\\-file\\fR \\fIPATH\\fR] [\\fB\\-\\-timer\\-dropin\\fR]",
        ".SH DESCRIPTION",
        "oxetcd serves the etcd v3 gRPC API from a raft\\-replicated RocksDB store. "
        "It reads its configuration from defaults, the TOML file named by "
        "\\fB\\-\\-config\\-file\\fR, \\fBETCD_*\\fR environment variables and flags, "
        "each overriding the previous.",
        ".SH OPTIONS",
        ".TP",
        "\\fB\\-\\-config\\-file\\fR \\fIPATH\\fR",
        "TOML configuration file; ETCD_* variables and flags override its values.",
    ]
    for title, entries in sections:
        out += [".SS " + roff(title)]
        for entry in entries:
            value = entry["value"]
            if value == "BOOL":
                arg = "[=\\fIBOOL\\fR]"
            elif value:
                arg = f" \\fI{value}\\fR"
            else:
                arg = ""
            out += [
                ".TP",
                f"\\fB\\-\\-{roff(entry['name'])}\\fR{arg}",
                f"{roff(sentence(entry['help']))} Default: {roff(entry['default'])}.",
            ]
    out += [".SH ENVIRONMENT"]
    out += [roff(" ".join(footer))] if footer else []
    out += [
        ".SH FILES",
        ".TP",
        "\\fI/etc/oxetcd/oxetcd.toml\\fR",
        "Configuration of the packaged service.",
        ".TP",
        "\\fI/var/lib/oxetcd\\fR",
        "Data directory of the packaged service.",
        ".TP",
        "\\fI/var/log/etcd.log\\fR",
        "Log file of the packaged service; SIGHUP reopens it.",
        ".TP",
        "\\fI/var/backups/oxetcd\\fR",
        "Backups written by \\fBoxetcd backup\\fR (run by oxetcd\\-backup.timer, off by "
        "default): the [backup] table of the configuration file says where, when and how many.",
        ".TP",
        "\\fI/usr/share/oxetcd/grafana/\\fR, \\fI/usr/share/oxetcd/prometheus/\\fR",
        "Grafana dashboards and Prometheus alert rules.",
        ".TP",
        "\\fI/usr/share/doc/oxetcd/runbooks.md\\fR",
        "What to do when an alert fires.",
        ".SH SIGNALS",
        "SIGTERM and SIGINT stop the server gracefully; SIGHUP reopens the log file.",
        ".SH SEE ALSO",
        "\\fBsystemctl\\fR(1), \\fBetcdctl\\fR(1)",
    ]
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = Path(os.environ.get("CARGO_TARGET_DIR", HERE.parent / "target"))
    parser.add_argument("--binary", default=str(target / "release" / "oxetcd"))
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    env["COLUMNS"] = "1000"
    help_text = subprocess.run([args.binary, "--help"], check=True, capture_output=True, text=True, env=env).stdout
    version = subprocess.run([args.binary, "--version"], check=True, capture_output=True, text=True, env=env).stdout.split()[-1]
    sections, footer = parse_help(help_text)
    outputs = {
        HERE / "oxetcd.toml": render_toml(sections),
        HERE / "oxetcd.1": render_man(sections, footer, version),
    }
    stale = []
    for path, text in outputs.items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run packaging/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
