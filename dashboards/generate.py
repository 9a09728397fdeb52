#!/usr/bin/env python3
"""Writes the oxetcd Grafana dashboards (dashboards/oxetcd-*.json) from the panel lists below.

The JSON files are checked in and importable as they are; this script only keeps the four of them
consistent (one datasource reference, one selector, one layout rule). Run it after editing a panel:

    python3 dashboards/generate.py

tests/it/dashboards.rs checks the output (structure, selectors, and that every metric is exported).
Standard library only.
"""

import json
import os

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Every selector carries this; the tests check it.
SEL = 'job=~"$cluster", instance=~"$instance"'
RI = "$__rate_interval"
SCHEMA_VERSION = 38
GRID_COLUMNS = 24

# gRPC codes etcd's mixin counts as server-side failures (the etcdHighNumberOfFailedGRPCRequests alert).
FAILED_CODES = "Unknown|FailedPrecondition|ResourceExhausted|Internal|Unavailable|DataLoss|DeadlineExceeded"
FAILED = 'grpc_code=~"' + FAILED_CODES + '"'
NOT_OK = 'grpc_code!="OK"'
UNARY = 'grpc_type="unary"'
BIDI = 'grpc_type="bidi_stream"'


def sel(extra=""):
    return "{" + SEL + (", " + extra if extra else "") + "}"


def target(expr, legend="", **extra):
    t = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
    instant = extra.pop("instant", False)
    t["instant"], t["range"] = instant, not instant
    t.update(extra)
    return t


def thresholds(*steps):
    """steps: (value or None for the base, colour)."""
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def timeseries(title, description, unit, targets, bars=False, minimum=0, stack=False):
    custom = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 40 if bars else 10,
        "lineWidth": 1,
        "pointSize": 4,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
    }
    defaults = {"custom": custom, "unit": unit}
    if minimum is not None:
        defaults["min"] = minimum
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
    }


def stat(title, description, unit, targets, mappings=None, steps=None, text_mode="auto",
         color_mode="value", no_value=None):
    defaults = {
        "color": {"mode": "thresholds"},
        "mappings": mappings or [],
        "thresholds": steps or thresholds((None, "green")),
        "unit": unit,
    }
    if no_value is not None:
        defaults["noValue"] = no_value
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "colorMode": color_mode,
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": text_mode,
        },
        "targets": targets,
    }


def gauge(title, description, unit, targets, steps, minimum, maximum, kind="gauge"):
    options = {
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showThresholdLabels": False,
        "showThresholdMarkers": True,
    }
    if kind == "bargauge":
        options = {
            "displayMode": "gradient",
            "minVizHeight": 10,
            "minVizWidth": 0,
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showUnfilled": True,
            "valueMode": "color",
        }
    return {
        "type": kind,
        "title": title,
        "description": description,
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "thresholds"},
                "mappings": [],
                "max": maximum,
                "min": minimum,
                "thresholds": steps,
                "unit": unit,
            },
            "overrides": [],
        },
        "options": options,
        "targets": targets,
    }


def heatmap(title, description, unit, bucket_metric):
    expr = f"sum by (le) (increase({bucket_metric}{sel()}[{RI}]))"
    return {
        "type": "heatmap",
        "title": title,
        "description": description,
        "fieldConfig": {
            "defaults": {
                "custom": {
                    "hideFrom": {"legend": False, "tooltip": False, "viz": False},
                    "scaleDistribution": {"type": "linear"},
                },
                "unit": unit,
            },
            "overrides": [],
        },
        "options": {
            "calculate": False,
            "cellGap": 1,
            "color": {
                "exponent": 0.5,
                "fill": "dark-orange",
                "mode": "scheme",
                "reverse": False,
                "scale": "exponential",
                "scheme": "Oranges",
                "steps": 64,
            },
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
            "filterValues": {"le": 1e-9},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"show": True, "yHistogram": False},
            "yAxis": {"axisPlacement": "left", "reverse": False, "unit": unit},
        },
        "targets": [target(expr, "{{le}}", format="heatmap")],
    }


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def quantiles(metric, by, legend_prefix, qs=(0.5, 0.99), extra=""):
    """histogram_quantile targets over metric_bucket, one per quantile."""
    out = []
    for q in qs:
        expr = (
            f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate({metric}_bucket{sel(extra)}[{RI}])))"
        )
        out.append(target(expr, f"{legend_prefix} p{int(round(q * 100))}"))
    return out


def layout(items):
    """items: panels (with a "w" and "h" key) and rows; fills a 24-column grid left to right."""
    panels = []
    x = y = row_height = 0
    for next_id, item in enumerate(items, start=1):
        item = dict(item)
        if item["type"] == "row":
            if x:
                y += row_height
            item["gridPos"] = {"h": 1, "w": GRID_COLUMNS, "x": 0, "y": y}
            item["datasource"] = DATASOURCE
            x, y, row_height = 0, y + 1, 0
        else:
            w, h = item.pop("w"), item.pop("h")
            if x + w > GRID_COLUMNS:
                x, y, row_height = 0, y + row_height, 0
            item["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            item["datasource"] = DATASOURCE
            for ref, t in enumerate(item["targets"]):
                t["refId"] = chr(ord("A") + ref)
            x += w
            row_height = max(row_height, h)
        item["id"] = next_id
        panels.append(order_panel(item))
    return panels


PANEL_KEY_ORDER = ["id", "type", "title", "description", "datasource", "gridPos", "fieldConfig",
                   "options", "targets", "collapsed", "panels"]


def order_panel(panel):
    return {k: panel[k] for k in PANEL_KEY_ORDER if k in panel}


def sized(panel, w, h):
    panel["w"], panel["h"] = w, h
    return panel


def variables():
    cluster_query = "label_values(etcd_server_has_leader, job)"
    instance_query = 'label_values(etcd_server_has_leader{job=~"$cluster"}, instance)'
    return {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "includeAll": False,
                "multi": False,
                "options": [],
                "refresh": 1,
                "regex": "",
                "skipUrlSync": False,
            },
            {
                "name": "cluster",
                "label": "Cluster (job)",
                "type": "query",
                "datasource": DATASOURCE,
                "definition": cluster_query,
                "query": cluster_query,
                "current": {},
                "hide": 0,
                "includeAll": False,
                "multi": False,
                "options": [],
                "refresh": 2,
                "regex": "",
                "skipUrlSync": False,
                "sort": 1,
            },
            {
                "name": "instance",
                "label": "Member (instance)",
                "type": "query",
                "datasource": DATASOURCE,
                "definition": instance_query,
                "query": instance_query,
                "allValue": ".+",
                "current": {},
                "hide": 0,
                "includeAll": True,
                "multi": True,
                "options": [],
                "refresh": 2,
                "regex": "",
                "skipUrlSync": False,
                "sort": 1,
            },
        ]
    }


def dashboard(uid, title, description, items):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["oxetcd"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "asDropdown": True,
                "icon": "external link",
                "includeVars": True,
                "keepTime": True,
                "tags": ["oxetcd"],
                "targetBlank": False,
                "title": "oxetcd dashboards",
                "type": "dashboards",
            }
        ],
        "templating": variables(),
        "panels": layout(items),
    }


# ----------------------------------------------------------------------------------------------
# oxetcd / Overview

ROLE_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"index": 0, "text": "follower", "color": "blue"},
            "1": {"index": 1, "text": "leader", "color": "green"},
            "2": {"index": 2, "text": "learner", "color": "purple"},
        },
    }
]


def overview():
    items = [
        row("Health"),
        sized(stat(
            "Members up",
            "Members Prometheus scraped successfully (up) against members it tried to scrape.",
            "short",
            [
                target(f"sum(up{sel()})", "up", instant=True),
                target(f"count(up{sel()})", "scraped", instant=True),
            ],
            text_mode="value_and_name",
        ), 5, 4),
        sized(stat(
            "Members without a leader",
            "Members whose etcd_server_has_leader is 0. Anything above 0 means writes fail there.",
            "short",
            [target(f"count(etcd_server_has_leader{sel()} == 0) or vector(0)", "no leader",
                    instant=True)],
            steps=thresholds((None, "green"), (1, "red")),
            color_mode="background",
        ), 4, 4),
        sized(stat(
            "Member roles",
            "Each member's role: leader (etcd_server_is_leader), learner (etcd_server_is_learner) "
            "or follower.",
            "none",
            [target(
                f"max by (instance) (etcd_server_is_leader{sel()}) "
                f"+ 2 * max by (instance) (etcd_server_is_learner{sel()})",
                "{{instance}}", instant=True)],
            mappings=ROLE_MAPPINGS,
            text_mode="value_and_name",
        ), 7, 4),
        sized(stat(
            "Leader changes in range",
            "Most leader changes any member saw during the dashboard's time range.",
            "short",
            [target(f"max(increase(etcd_server_leader_changes_seen_total{sel()}[$__range]))",
                    "leader changes", instant=True)],
            steps=thresholds((None, "green"), (1, "orange"), (4, "red")),
        ), 4, 4),
        sized(stat(
            "Versions",
            "Members per reported server version (etcd_server_version).",
            "short",
            [target(f"count by (server_version) (etcd_server_version{sel()})",
                    "{{server_version}}", instant=True)],
            text_mode="value_and_name",
        ), 4, 4),
        row("Requests"),
        sized(timeseries(
            "Unary requests by code",
            "Completed unary gRPC requests per second, by gRPC status code.",
            "reqps",
            [target(
                f"sum by (grpc_code) (rate(grpc_server_handled_total{sel(UNARY)}[{RI}]))",
                "{{grpc_code}}")],
            stack=True,
        ), 12, 8),
        sized(timeseries(
            "Failed request ratio",
            "Share of gRPC requests that ended with a server-side failure code ("
            + FAILED_CODES.replace("|", ", ") + "), as in the etcdHighNumberOfFailedGRPCRequests alert.",
            "percentunit",
            [target(
                f"(sum(rate(grpc_server_handled_total{sel(FAILED)}[{RI}])) or vector(0)) "
                f"/ sum(rate(grpc_server_handled_total{sel()}[{RI}]))",
                "failed")],
        ), 12, 8),
        row("Space"),
        sized(timeseries(
            "DB size against quota",
            "Backend size on disk, the part of it in use, and the space quota (--quota-backend-bytes). "
            "At the quota the cluster raises a NOSPACE alarm and refuses writes.",
            "bytes",
            [
                target(f"etcd_mvcc_db_total_size_in_bytes{sel()}", "{{instance}} total"),
                target(f"etcd_mvcc_db_total_size_in_use_in_bytes{sel()}", "{{instance}} in use"),
                target(f"max(etcd_server_quota_backend_bytes{sel()})", "quota"),
            ],
        ), 12, 8),
        sized(gauge(
            "DB size / quota",
            "etcd_mvcc_db_total_size_in_bytes / etcd_server_quota_backend_bytes per member.",
            "percentunit",
            [target(f"etcd_mvcc_db_total_size_in_bytes{sel()} / etcd_server_quota_backend_bytes{sel()}",
                    "{{instance}}", instant=True)],
            thresholds((None, "green"), (0.8, "orange"), (0.95, "red")),
            0, 1,
        ), 6, 8),
        sized(gauge(
            "Data dir free",
            "Free space on the filesystem holding --data-dir, as a share of its size.",
            "percentunit",
            [target(f"oxetcd_disk_data_dir_free_bytes{sel()} / oxetcd_disk_data_dir_total_bytes{sel()}",
                    "{{instance}}", instant=True)],
            thresholds((None, "red"), (0.1, "orange"), (0.2, "green")),
            0, 1, kind="bargauge",
        ), 6, 8),
        row("Certificates"),
        sized(gauge(
            "Certificates expire in",
            "Time left until each TLS certificate a member serves expires "
            "(oxetcd_tls_certificate_expiry_timestamp_seconds), by listener (client, peer) and "
            "file. Orange under 14 days, when oxetcdCertificateExpiringSoon fires; red under 2. "
            "Empty when no URL is https://.",
            "s",
            [target(f"oxetcd_tls_certificate_expiry_timestamp_seconds{sel()} - time()",
                    "{{instance}} {{listener}} {{path}}", instant=True)],
            thresholds((None, "red"), (2 * 86400, "orange"), (14 * 86400, "green")),
            0, 90 * 86400, kind="bargauge",
        ), 24, 6),
        row("Backups"),
        sized(gauge(
            "Newest backup age",
            "Time since the newest verified backup in each member's [backup] directory was "
            "written (oxetcd_backup_last_success_timestamp_seconds; oxetcd-backup.timer writes "
            "them). Red past 26 hours, the default [backup] max-age, after which "
            "oxetcdBackupTooOld fires for the cluster. A member that never backed up shows "
            "decades.",
            "s",
            [target(f"time() - oxetcd_backup_last_success_timestamp_seconds{sel()}",
                    "{{instance}}", instant=True)],
            thresholds((None, "green"), (26 * 3600, "red")),
            0, 2 * 86400, kind="bargauge",
        ), 12, 6),
        sized(stat(
            "Newest backup size",
            "Size of the newest verified backup in each member's [backup] directory "
            "(oxetcd_backup_last_size_bytes); 0 when there is none.",
            "bytes",
            [target(f"oxetcd_backup_last_size_bytes{sel()}", "{{instance}}", instant=True)],
        ), 12, 6),
    ]
    return dashboard(
        "oxetcd-overview",
        "oxetcd / Overview",
        "Cluster health at a glance: members up, leadership, request and failure rates, space.",
        items,
    )


# ----------------------------------------------------------------------------------------------
# oxetcd / Disk

def disk():
    wal = "etcd_disk_wal_fsync_duration_seconds"
    commit = "etcd_disk_backend_commit_duration_seconds"
    free = f"oxetcd_disk_data_dir_free_bytes{sel()}"
    items = [
        row("Sync latency"),
        sized(timeseries(
            "WAL fsync latency",
            "Time to write and sync raft log entries (etcd_disk_wal_fsync_duration_seconds), p50 and "
            "p99 per member. etcd's guidance: p99 under 10 ms on a healthy disk.",
            "s",
            quantiles(wal, "instance", "{{instance}}"),
        ), 12, 8),
        sized(timeseries(
            "Backend commit latency",
            "Time to commit applied entries to RocksDB (etcd_disk_backend_commit_duration_seconds), "
            "p50 and p99 per member. etcd's guidance: p99 under 25 ms.",
            "s",
            quantiles(commit, "instance", "{{instance}}"),
        ), 12, 8),
        sized(heatmap(
            "WAL fsync latency distribution",
            "Raft log syncs per latency bucket, all selected members.",
            "s",
            f"{wal}_bucket",
        ), 12, 8),
        sized(heatmap(
            "Backend commit latency distribution",
            "Backend commits per latency bucket, all selected members.",
            "s",
            f"{commit}_bucket",
        ), 12, 8),
        sized(timeseries(
            "Syncs per second",
            "Raft log syncs and backend commits per second.",
            "ops",
            [
                target(f"sum by (instance) (rate({wal}_count{sel()}[{RI}]))", "{{instance}} WAL fsync"),
                target(f"sum by (instance) (rate({commit}_count{sel()}[{RI}]))",
                       "{{instance}} backend commit"),
            ],
        ), 12, 8),
        sized(timeseries(
            "Mean sync latency",
            "Average WAL fsync and backend commit time (_sum / _count).",
            "s",
            [
                target(f"sum by (instance) (rate({wal}_sum{sel()}[{RI}])) "
                       f"/ sum by (instance) (rate({wal}_count{sel()}[{RI}]))", "{{instance}} WAL fsync"),
                target(f"sum by (instance) (rate({commit}_sum{sel()}[{RI}])) "
                       f"/ sum by (instance) (rate({commit}_count{sel()}[{RI}]))",
                       "{{instance}} backend commit"),
            ],
        ), 12, 8),
        row("Space"),
        sized(timeseries(
            "Free space",
            "Bytes available to the server on the filesystems holding the data dir and the log file.",
            "bytes",
            [
                target(free, "{{instance}} data dir"),
                target(f"oxetcd_disk_log_dir_free_bytes{sel()}", "{{instance}} log dir"),
            ],
        ), 9, 8),
        sized(timeseries(
            "Free space (%)",
            "Free space as a share of each filesystem's size.",
            "percentunit",
            [
                target(f"{free} / oxetcd_disk_data_dir_total_bytes{sel()}", "{{instance}} data dir"),
                target(f"oxetcd_disk_log_dir_free_bytes{sel()} / oxetcd_disk_log_dir_total_bytes{sel()}",
                       "{{instance}} log dir"),
            ],
        ), 9, 8),
        sized(stat(
            "Data dir full in",
            "Time until the data dir's filesystem is full at the rate free space fell over the last "
            "hour (deriv over 1h). Empty while free space is not falling.",
            "s",
            [target(f"clamp_max({free} / -(deriv({free}[1h]) < 0), 31536000)", "{{instance}}",
                    instant=True)],
            steps=thresholds((None, "red"), (86400, "orange"), (604800, "green")),
            text_mode="value_and_name",
            no_value="not filling",
        ), 6, 8),
        row("RocksDB and raft log"),
        sized(timeseries(
            "RocksDB pending compaction",
            "RocksDB's estimate of bytes compaction still has to rewrite "
            "(estimate-pending-compaction-bytes). Steady growth means compaction is falling behind.",
            "bytes",
            [target(f"oxetcd_rocksdb_pending_compaction_bytes{sel()}", "{{instance}}")],
        ), 8, 8),
        sized(timeseries(
            "RocksDB live data against DB size",
            "RocksDB's estimate of live data (estimate-live-data-size) against the backend's size on "
            "disk; the gap is space compaction can reclaim.",
            "bytes",
            [
                target(f"oxetcd_rocksdb_live_data_size_bytes{sel()}", "{{instance}} live data"),
                target(f"etcd_mvcc_db_total_size_in_bytes{sel()}", "{{instance}} DB size"),
            ],
        ), 8, 8),
        sized(timeseries(
            "Raft log entries",
            "Entries kept in the raft log (oxetcd_raft_log_entries); drops at each log compaction.",
            "short",
            [target(f"oxetcd_raft_log_entries{sel()}", "{{instance}}")],
        ), 8, 8),
        sized(timeseries(
            "Revisions since compaction",
            "MVCC revisions kept since the last compaction (current - compact revision). Grows "
            "without bound when nothing compacts.",
            "short",
            [target(f"etcd_debugging_mvcc_current_revision{sel()} - "
                    f"etcd_debugging_mvcc_compact_revision{sel()}", "{{instance}}")],
        ), 24, 7),
    ]
    return dashboard(
        "oxetcd-disk",
        "oxetcd / Disk",
        "Sync latency, free space and growth of the data dir, RocksDB and the raft log.",
        items,
    )


# ----------------------------------------------------------------------------------------------
# oxetcd / Raft

def raft():
    leaderless = "oxetcd_server_leaderless_duration_seconds"
    election = "oxetcd_server_election_duration_seconds"
    items = [
        row("Proposals"),
        sized(timeseries(
            "Proposals committed and applied",
            "Raft entries committed and applied per second (rate of the commit and apply index).",
            "ops",
            [
                target(f"rate(etcd_server_proposals_committed_total{sel()}[{RI}])", "{{instance}} committed"),
                target(f"rate(etcd_server_proposals_applied_total{sel()}[{RI}])", "{{instance}} applied"),
            ],
        ), 12, 8),
        sized(timeseries(
            "Apply lag",
            "Committed entries not yet applied (commit index - apply index). Should stay near 0.",
            "short",
            [target(f"etcd_server_proposals_committed_total{sel()} - "
                    f"etcd_server_proposals_applied_total{sel()}", "{{instance}}")],
        ), 12, 8),
        sized(timeseries(
            "Proposals pending",
            "Proposals waiting to commit on each member.",
            "short",
            [target(f"etcd_server_proposals_pending{sel()}", "{{instance}}")],
        ), 12, 8),
        sized(timeseries(
            "Proposals failed",
            "Failed proposals per second (lost leadership, timeouts).",
            "ops",
            [target(f"rate(etcd_server_proposals_failed_total{sel()}[{RI}])", "{{instance}}")],
        ), 12, 8),
        row("Leadership"),
        sized(timeseries(
            "Leader changes",
            "Leader changes each member saw per interval.",
            "short",
            [target(f"increase(etcd_server_leader_changes_seen_total{sel()}[{RI}])", "{{instance}}")],
            bars=True,
        ), 12, 8),
        sized(timeseries(
            "Leaderless episodes and elections",
            "Times a member lost its leader and elections it saw end, per interval "
            "(_count of the two histograms).",
            "short",
            [
                target(f"increase({leaderless}_count{sel()}[{RI}])", "{{instance}} leaderless"),
                target(f"increase({election}_count{sel()}[{RI}])", "{{instance}} elections"),
            ],
            bars=True,
        ), 12, 8),
        sized(timeseries(
            "Time without a leader",
            "How long a member had no leader before it had one again "
            "(oxetcd_server_leaderless_duration_seconds), p50 and p99. Points appear only around "
            "episodes.",
            "s",
            quantiles(leaderless, "instance", "{{instance}}"),
        ), 8, 8),
        sized(timeseries(
            "Election duration",
            "From the start of an election (pre-vote or campaign) to a leader elected "
            "(oxetcd_server_election_duration_seconds), p50 and p99.",
            "s",
            quantiles(election, "instance", "{{instance}}"),
        ), 8, 8),
        sized(timeseries(
            "Mean time without a leader",
            "Average leaderless episode and election (_sum / _count).",
            "s",
            [
                target(f"increase({leaderless}_sum{sel()}[{RI}]) / increase({leaderless}_count{sel()}[{RI}])",
                       "{{instance}} leaderless"),
                target(f"increase({election}_sum{sel()}[{RI}]) / increase({election}_count{sel()}[{RI}])",
                       "{{instance}} election"),
            ],
        ), 8, 8),
        row("Peers"),
        sized(timeseries(
            "Peer round-trip time p99",
            "p99 of the round-trip time to each peer (etcd_network_peer_round_trip_time_seconds), by "
            "member and peer id.",
            "s",
            quantiles("etcd_network_peer_round_trip_time_seconds", "instance, To", "{{instance}} → {{To}}",
                      qs=(0.99,)),
        ), 12, 8),
        sized(timeseries(
            "Peer send failures",
            "Failed sends to each peer per second.",
            "ops",
            [target(f"sum by (instance, To) (rate(etcd_network_peer_sent_failures_total{sel()}[{RI}]))",
                    "{{instance}} → {{To}}")],
        ), 12, 8),
        sized(timeseries(
            "Peer traffic sent",
            "Bytes per second sent to each peer.",
            "Bps",
            [target(f"sum by (instance, To) (rate(etcd_network_peer_sent_bytes_total{sel()}[{RI}]))",
                    "{{instance}} → {{To}}")],
        ), 8, 8),
        sized(timeseries(
            "Peer traffic received",
            "Bytes per second received from each peer.",
            "Bps",
            [target(f"sum by (instance, From) (rate(etcd_network_peer_received_bytes_total{sel()}[{RI}]))",
                    "{{instance}} ← {{From}}")],
        ), 8, 8),
        sized(timeseries(
            "Snapshots",
            "Raft snapshots sent to and received from peers per interval, and failed transfers "
            "(etcd_network_snapshot_{send,receive}_{success,failures}).",
            "short",
            [
                target(f"sum by (instance) (increase(etcd_network_snapshot_send_success{sel()}[{RI}]))",
                       "{{instance}} sent"),
                target(f"sum by (instance) (increase(etcd_network_snapshot_receive_success{sel()}[{RI}]))",
                       "{{instance}} received"),
                target(f"sum by (instance) (increase(etcd_network_snapshot_send_failures{sel()}[{RI}])) "
                       f"+ sum by (instance) (increase(etcd_network_snapshot_receive_failures{sel()}[{RI}]))",
                       "{{instance}} failed"),
            ],
            bars=True,
        ), 8, 8),
        row("Slow paths"),
        sized(timeseries(
            "Slow applies and late heartbeats",
            "Entries that took over 100 ms to apply (etcd_server_slow_apply_total) and leader "
            "heartbeats sent later than twice the heartbeat interval "
            "(etcd_server_heartbeat_send_failures_total), per interval. Both usually mean a slow "
            "disk or an overloaded member.",
            "short",
            [
                target(f"increase(etcd_server_slow_apply_total{sel()}[{RI}])", "{{instance}} slow applies"),
                target(f"increase(etcd_server_heartbeat_send_failures_total{sel()}[{RI}])",
                       "{{instance}} late heartbeats"),
            ],
            bars=True,
        ), 8, 8),
        sized(timeseries(
            "Read index",
            "Linearizable reads whose ReadIndex went unanswered in time "
            "(etcd_server_slow_read_indexes_total) or failed (etcd_server_read_indexes_failed_total), "
            "per interval. Rising while writes work points at the network to the leader.",
            "short",
            [
                target(f"increase(etcd_server_slow_read_indexes_total{sel()}[{RI}])", "{{instance}} slow"),
                target(f"increase(etcd_server_read_indexes_failed_total{sel()}[{RI}])",
                       "{{instance}} failed"),
            ],
            bars=True,
        ), 8, 8),
        sized(timeseries(
            "Health checks",
            "/health answers per interval (etcd_server_health_success and _failures); a failure "
            "names its reason in the member's log.",
            "short",
            [
                target(f"increase(etcd_server_health_success{sel()}[{RI}])", "{{instance}} healthy"),
                target(f"increase(etcd_server_health_failures{sel()}[{RI}])", "{{instance}} unhealthy"),
            ],
            bars=True,
        ), 8, 8),
    ]
    return dashboard(
        "oxetcd-raft",
        "oxetcd / Raft",
        "Raft proposals, leadership and elections, and traffic between members.",
        items,
    )


# ----------------------------------------------------------------------------------------------
# oxetcd / Clients

def stream_count(service):
    """Open streams: started - handled. A member that has not yet finished a stream of this service
    may have no handled series at all, so a missing handled side counts as 0."""
    extra = f'grpc_service="{service}", grpc_type="bidi_stream"'
    started = f"sum by (instance) (grpc_server_started_total{sel(extra)})"
    handled = f"sum by (instance) (grpc_server_handled_total{sel(extra)})"
    return f"{started} - ({handled} or {started} * 0)"


def clients():
    items = [
        row("gRPC"),
        sized(timeseries(
            "Requests by method",
            "Unary gRPC requests started per second, by service and method.",
            "reqps",
            [target(f"sum by (grpc_service, grpc_method) "
                    f"(rate(grpc_server_started_total{sel(UNARY)}[{RI}]))",
                    "{{grpc_service}}/{{grpc_method}}")],
        ), 12, 8),
        sized(timeseries(
            "Errors by method and code",
            "gRPC requests and streams that ended with a code other than OK, per second.",
            "reqps",
            [target(f"sum by (grpc_method, grpc_code) "
                    f"(rate(grpc_server_handled_total{sel(NOT_OK)}[{RI}]))",
                    "{{grpc_method}} {{grpc_code}}")],
        ), 12, 8),
        sized(timeseries(
            "Latency p50 by method",
            "Median handling time of unary requests (grpc_server_handling_seconds).",
            "s",
            quantiles("grpc_server_handling_seconds", "grpc_method", "{{grpc_method}}", qs=(0.5,),
                      extra=UNARY),
        ), 12, 8),
        sized(timeseries(
            "Latency p99 by method",
            "p99 handling time of unary requests. etcd's mixin alerts above 150 ms "
            "(etcdGRPCRequestsSlow).",
            "s",
            quantiles("grpc_server_handling_seconds", "grpc_method", "{{grpc_method}}", qs=(0.99,),
                      extra=UNARY),
        ), 12, 8),
        row("Streams"),
        sized(timeseries(
            "Active watch and lease streams",
            "Open bidi streams: started - handled, for etcdserverpb.Watch and etcdserverpb.Lease "
            "(LeaseKeepAlive).",
            "short",
            [
                target(stream_count("etcdserverpb.Watch"), "{{instance}} watch streams"),
                target(stream_count("etcdserverpb.Lease"), "{{instance}} lease streams"),
            ],
        ), 8, 8),
        sized(timeseries(
            "Watchers",
            "Watch streams (etcd_debugging_mvcc_watch_stream_total) and the watchers registered on "
            "them (etcd_debugging_mvcc_watcher_total), and watchers catching up from storage "
            "because they fell behind (etcd_debugging_mvcc_slow_watcher_total).",
            "short",
            [
                target(f"etcd_debugging_mvcc_watch_stream_total{sel()}", "{{instance}} streams"),
                target(f"etcd_debugging_mvcc_watcher_total{sel()}", "{{instance}} watchers"),
                target(f"etcd_debugging_mvcc_slow_watcher_total{sel()}", "{{instance}} slow"),
            ],
        ), 8, 8),
        sized(timeseries(
            "Stream messages",
            "Messages per second received and sent on bidi streams, by service.",
            "ops",
            [
                target(f"sum by (grpc_service) (rate(grpc_server_msg_received_total"
                       f"{sel(BIDI)}[{RI}]))", "{{grpc_service}} received"),
                target(f"sum by (grpc_service) (rate(grpc_server_msg_sent_total"
                       f"{sel(BIDI)}[{RI}]))", "{{grpc_service}} sent"),
            ],
        ), 8, 8),
        sized(timeseries(
            "Watch events",
            "Events per second the watch streams sent (etcd_debugging_mvcc_events_total), and "
            "events handed to streams but not sent yet (etcd_debugging_mvcc_pending_events_total).",
            "short",
            [
                target(f"rate(etcd_debugging_mvcc_events_total{sel()}[{RI}])", "{{instance}} sent/s"),
                target(f"etcd_debugging_mvcc_pending_events_total{sel()}", "{{instance}} pending"),
            ],
        ), 12, 8),
        sized(timeseries(
            "Client traffic",
            "Bytes per second received from and sent to clients over gRPC.",
            "Bps",
            [
                target(f"rate(etcd_network_client_grpc_received_bytes_total{sel()}[{RI}])", "{{instance}} in"),
                target(f"rate(etcd_network_client_grpc_sent_bytes_total{sel()}[{RI}])", "{{instance}} out"),
            ],
        ), 12, 8),
        row("Key-value store"),
        sized(timeseries(
            "MVCC operations",
            "Ranges, puts and deletes per second on each member's store, and transactions of more "
            "than one of them (etcd_mvcc_{range,put,delete,txn}_total, counted as etcd counts "
            "them: writes on every member, reads where they are served).",
            "ops",
            [
                target(f"rate(etcd_mvcc_range_total{sel()}[{RI}])", "{{instance}} range"),
                target(f"rate(etcd_mvcc_put_total{sel()}[{RI}])", "{{instance}} put"),
                target(f"rate(etcd_mvcc_delete_total{sel()}[{RI}])", "{{instance}} delete"),
                target(f"rate(etcd_mvcc_txn_total{sel()}[{RI}])", "{{instance}} txn"),
            ],
        ), 8, 8),
        sized(timeseries(
            "Keys",
            "Keys that exist at the current revision (etcd_debugging_mvcc_keys_total).",
            "short",
            [target(f"etcd_debugging_mvcc_keys_total{sel()}", "{{instance}}")],
        ), 8, 8),
        sized(timeseries(
            "Client requests by API version",
            "gRPC calls and streams per second by the API version clients declare "
            "(etcd_server_client_requests_total; unknown when a client sends none). Shows which "
            "client generations still talk to the cluster.",
            "reqps",
            [target(f"sum by (client_api_version, type) "
                    f"(rate(etcd_server_client_requests_total{sel()}[{RI}]))",
                    "{{client_api_version}} {{type}}")],
        ), 8, 8),
        row("Process"),
        sized(timeseries(
            "Memory",
            "Resident and virtual memory of the server process.",
            "bytes",
            [
                target(f"process_resident_memory_bytes{sel()}", "{{instance}} resident"),
                target(f"process_virtual_memory_bytes{sel()}", "{{instance}} virtual"),
            ],
        ), 8, 8),
        sized(timeseries(
            "CPU",
            "CPU time used per second (1 = one core busy).",
            "short",
            [target(f"rate(process_cpu_seconds_total{sel()}[{RI}])", "{{instance}}")],
        ), 8, 8),
        sized(timeseries(
            "Open file descriptors",
            "Open file descriptors as a share of the process limit.",
            "percentunit",
            [target(f"process_open_fds{sel()} / process_max_fds{sel()}", "{{instance}}")],
        ), 5, 8),
        sized(stat(
            "Uptime",
            "Time since each server process started.",
            "s",
            [target(f"time() - process_start_time_seconds{sel()}", "{{instance}}", instant=True)],
            text_mode="value_and_name",
        ), 3, 8),
    ]
    return dashboard(
        "oxetcd-clients",
        "oxetcd / Clients",
        "gRPC request rates, failures and latency, watch and lease streams, client traffic, and the "
        "server process.",
        items,
    )


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    for name, build in [
        ("oxetcd-overview.json", overview),
        ("oxetcd-disk.json", disk),
        ("oxetcd-raft.json", raft),
        ("oxetcd-clients.json", clients),
    ]:
        with open(os.path.join(here, name), "w", encoding="utf-8") as f:
            json.dump(build(), f, indent=2, ensure_ascii=False)
            f.write("\n")


if __name__ == "__main__":
    main()
