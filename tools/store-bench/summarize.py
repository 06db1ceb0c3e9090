#!/usr/bin/env python3
"""Markdown tables from store-bench's JSON lines: every cell shows each run
("run1 / run2 / ..."), so the noise is visible instead of averaged away."""

import json
import sys
from collections import OrderedDict

ORDER = ["fjall", "redb", "sqlite"]
MODES = ["durable", "sync-data", "normal", "no-sync"]


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def config(r):
    name = r["engine"]
    mode = r["mode"]
    if r["engine"] == "sqlite":
        mode = {"durable": "WAL+FULL", "normal": "WAL+NORMAL", "no-sync": "WAL+OFF"}[mode]
    elif r["engine"] == "fjall":
        mode = {"durable": "SyncAll", "sync-data": "SyncData", "no-sync": "no fsync"}[mode]
    else:
        mode = {"durable": "Immediate", "no-sync": "Durability::None"}[mode]
        if r.get("redb_quick_repair"):
            mode += " +quick-repair"
    return f"{name} {mode}"


def sort_key(k):
    r = k[0]
    return (
        ORDER.index(r["engine"]),
        r.get("redb_quick_repair", False),
        MODES.index(r["mode"]),
        r["batch"],
    )


def group(rows, phase):
    g = OrderedDict()
    for r in rows:
        if r["phase"] != phase:
            continue
        key = (r["engine"], r["mode"], r["batch"], r.get("redb_quick_repair", False))
        g.setdefault(key, []).append(r)
    items = sorted(((v[0], v) for v in g.values()), key=sort_key)
    return [v for _, v in items]


def fmt(x, kind):
    if kind == "int":
        return f"{x:,.0f}"
    if kind == "k":
        return f"{x / 1000:,.1f}k"
    if kind == "ms":
        return f"{x:.2f}" if x < 10 else f"{x:.0f}"
    if kind == "s":
        return f"{x:.2f}" if x < 10 else f"{x:.1f}"
    if kind == "mib":
        return f"{x / 1048576:.1f}"
    return str(x)


def cell(runs, field, kind):
    vals = [r[field] for r in runs if field in r]
    return " / ".join(fmt(v, kind) for v in vals) if vals else "-"


def table(title, rows, phase, cols, with_batch=True):
    groups = group(rows, phase)
    if not groups:
        return
    print(f"\n### {title}\n")
    head = ["engine, mode"] + (["B"] if with_batch else []) + [c[0] for c in cols]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for runs in groups:
        line = [config(runs[0])] + ([str(runs[0]["batch"])] if with_batch else [])
        line += [cell(runs, f, k) for _, f, k in cols]
        print("| " + " | ".join(line) + " |")


def main():
    rows = load(sys.argv[1])
    labels = sorted({r.get("label", "") for r in rows})
    print(f"Runs: {', '.join(labels)}; each cell lists the runs in that order.")
    for lab in labels:
        loads = [r["loadavg1"] for r in rows if r.get("label", "") == lab and "loadavg1" in r]
        if loads:
            print(f"\n{lab or '(no label)'}: 1-minute load average at the end of each phase "
                  f"{min(loads):.2f} to {max(loads):.2f} (2 CPUs)")
    # disk_after_a lives in the A rows; join it into B's for the table above.
    a_disk = {
        (r["engine"], r["mode"], r["batch"], r.get("redb_quick_repair", False), r.get("label")): r
        for r in rows
        if r["phase"] == "A_append"
    }
    for r in rows:
        if r["phase"] == "B_ack":
            a = a_disk.get((r["engine"], r["mode"], r["batch"], r.get("redb_quick_repair", False), r.get("label")))
            if a:
                r["disk_after_a_alloc_bytes"] = a["disk_after_a_alloc_bytes"]
    table(
        "Phase A: append (random session per message, one commit per batch of B)",
        rows,
        "A_append",
        [
            ("messages", "messages", "int"),
            ("msgs/s", "msgs_per_s", "k"),
            ("commits/s", "commits_per_s", "int"),
            ("commit p50 ms", "commit_p50_ms", "ms"),
            ("commit p99 ms", "commit_p99_ms", "ms"),
        ],
    )
    table(
        "Phase B: acknowledge (delete in append order, batches of B)",
        rows,
        "B_ack",
        [
            ("msgs/s", "msgs_per_s", "k"),
            ("commit p50 ms", "commit_p50_ms", "ms"),
            ("commit p99 ms", "commit_p99_ms", "ms"),
        ],
    )
    table(
        "Disk (MiB allocated on disk) after A, after B (everything deleted), 2 s later, after compaction",
        rows,
        "B_ack",
        [
            ("after A", "disk_after_a_alloc_bytes", "mib"),
            ("after B", "disk_after_b_alloc_bytes", "mib"),
            ("B + 2 s", "disk_after_b_2s_alloc_bytes", "mib"),
            ("compacted", "disk_after_compact_alloc_bytes", "mib"),
            ("compact s", "compact_secs", "s"),
            ("apparent after B", "disk_after_b_bytes", "mib"),
        ],
    )
    table(
        "Phase C: steady state (append 16, delete the batch 8 batches back; ~128 queued)",
        rows,
        "C_steady",
        [
            ("iterations", "iterations", "int"),
            ("msgs/s", "msgs_per_s", "k"),
            ("commits/s", "commits_per_s", "int"),
            ("append p50 ms", "append_p50_ms", "ms"),
            ("append p99 ms", "append_p99_ms", "ms"),
            ("append max ms", "append_max_ms", "ms"),
            ("delete p99 ms", "delete_p99_ms", "ms"),
            ("disk end MiB", "disk_end_of_c_alloc_bytes", "mib"),
            ("disk max MiB", "disk_max_during_c_alloc_bytes", "mib"),
        ],
        with_batch=False,
    )
    table(
        "Phase D: reconnect (100 messages in each of 1,000 sessions, read each session once)",
        rows,
        "D_reconnect",
        [
            ("load s", "load_secs", "s"),
            ("reads/s", "reads_per_s", "int"),
            ("read p50 ms", "read_p50_ms", "ms"),
            ("read p99 ms", "read_p99_ms", "ms"),
            ("disk MiB", "disk_after_d_alloc_bytes", "mib"),
        ],
        with_batch=False,
    )
    table(
        "Recovery: clean close and reopen with N stored, then read one session",
        rows,
        "R_clean_reopen",
        [
            ("N", "messages", "int"),
            ("load msgs/s", "load_msgs_per_s", "k"),
            ("disk MiB", "disk_loaded_alloc_bytes", "mib"),
            ("close s", "close_secs", "s"),
            ("open s", "open_secs", "s"),
            ("first read s", "first_read_secs", "s"),
            ("session 0", "session0_messages", "int"),
        ],
        with_batch=False,
    )
    table(
        "Recovery after a crash (child process stores N and exits without closing)",
        rows,
        "R_crash_reopen",
        [
            ("N", "messages", "int"),
            ("disk MiB", "disk_after_crash_alloc_bytes", "mib"),
            ("open s", "open_secs", "s"),
            ("first read s", "first_read_secs", "s"),
            ("session 0 (of 1000)", "session0_messages", "int"),
        ],
        with_batch=False,
    )


if __name__ == "__main__":
    main()
