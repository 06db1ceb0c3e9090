#!/usr/bin/env python3
"""QoS 1 to persistent sessions, Bulwark with durable storage against Mosquitto with
`persistence true`, side by side: `bulwark bench pairs --qos 1 --protocol 5 --persistent`
(subscribers with Session Expiry 3600 s), so that every message a broker routes is one it
keeps for a persistent session.

The guarantees differ, and the table says so: Bulwark (`[storage] sync = "always"`, its default)
answers PUBACK only once the message is synced to disk for the subscriber's session; Mosquitto
writes its in-memory state to disk only every `autosave_interval` (default 1800 s) and at
shutdown, so a crash loses everything since the last save. `--bulwark-sync periodic` runs
Bulwark with `sync = "periodic"` (1 s) instead.

Each broker is a fresh process in a fresh directory pinned to one core (Bulwark with one
worker), the loader to the other; runs alternate Bulwark, Mosquitto, ... Loopback only.

    python3 scripts/bench_durable.py [--reps 3] [--duration 10] [--pairs 50]
        [--bulwark-sync always|periodic] [-- extra bench options]

Prints a Markdown table of every run and the medians (docs/benchmarks.md).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile

from bench_compare import free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(kind, bins, port, work, a):
    if kind == "bulwark":
        conf = os.path.join(work, "bulwark.toml")
        sync = '"periodic"\nsync_interval = 1' if a.bulwark_sync == "periodic" else '"always"'
        with open(conf, "w") as f:
            f.write(
                f'[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:{port}"\n'
                "dangerous_allow_anonymous = true\n"
                "[acl]\ndangerous_allow_all = true\n"
                f'[storage]\npath = "store.redb"\nsync = {sync}\n'
            )
        cmd = [bins["bulwark"], "serve", "--config", conf, "--workers", "1", "--log-level", "error"]
    else:
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    f"persistence true\npersistence_location {work}/\n")
        cmd = [bins["mosquitto"], "-c", conf]
    log = open(os.path.join(work, f"{kind}.log"), "w")
    proc = subprocess.Popen(["taskset", "-c", a.broker_core] + cmd, stdout=log, stderr=log, cwd=work)
    if not wait_port(port, proc):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{kind} did not start on {port}; see {log.name}")
    return proc


def run(kind, bins, a, extra, rep):
    work = tempfile.mkdtemp(prefix=f"durable-{kind}-{rep}-", dir=a.work)
    port = free_port()
    proc = start(kind, bins, port, work, a)
    try:
        cmd = ["taskset", "-c", a.loader_core, bins["bulwark"], "bench", "pairs",
               "--qos", "1", "--protocol", "5", "--persistent",
               "--port", str(port), "--broker-pid", str(proc.pid),
               "--duration", str(a.duration), "-n", str(a.pairs),
               "--no-progress", "--json"] + extra
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=4 * a.duration + 120)
        if out.returncode != 0:
            raise RuntimeError(f"bench failed ({out.returncode}): {out.stderr[-2000:]}")
        return json.loads(out.stdout)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bulwark", default=os.path.join(ROOT, "target/release/bulwark"))
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--brokers", default="bulwark,mosquitto")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--bulwark-sync", choices=["always", "periodic"], default="always")
    ap.add_argument("--broker-core", default="0")
    ap.add_argument("--loader-core", default="1")
    ap.add_argument("--work", default=None)
    ap.add_argument("extra", nargs="*", help="more `bench pairs` options, after --")
    a = ap.parse_args()
    bins = {"bulwark": a.bulwark, "mosquitto": a.mosquitto}
    brokers = [b for b in a.brokers.split(",") if b]
    results = {b: [] for b in brokers}
    print("| broker | run | received (msg/s) | p99 (ms) | lost | duplicates | broker CPU |")
    print("|---|---|---|---|---|---|---|")
    for rep in range(a.reps):
        for kind in brokers:
            r = run(kind, bins, a, a.extra, rep)
            results[kind].append(r)
            cpu = r.get("broker_cpu_percent")
            print(f"| {kind} | {rep + 1} | {r['received_per_s']:,.0f} | "
                  f"{r['latency']['p99_us'] / 1000.0:.2f} | {r['lost']} | {r.get('duplicates', 0)} | "
                  f"{'' if cpu is None else f'{cpu:.0f}%'} |", flush=True)
    print()
    print("| broker | median received (msg/s) | median p99 (ms) |")
    print("|---|---|---|")
    med = {}
    for kind in brokers:
        rs = results[kind]
        med[kind] = statistics.median(r["received_per_s"] for r in rs)
        p99 = statistics.median(r["latency"]["p99_us"] for r in rs)
        print(f"| {kind} | {med[kind]:,.0f} | {p99 / 1000.0:.2f} |")
    if "bulwark" in med and "mosquitto" in med and med["mosquitto"] > 0:
        print(f"\nBulwark / Mosquitto: {med['bulwark'] / med['mosquitto']:.2f}x")


if __name__ == "__main__":
    main()
