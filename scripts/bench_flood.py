#!/usr/bin/env python3
"""Legitimate clients under a denial-of-service attack, Bulwark and Mosquitto side by side:
`bulwark bench flood` runs the `latency` scenario undisturbed, then again while a slowloris and a
connection flood come from another loopback address (127.0.0.2), and reports both p99s.

Each broker is a fresh process pinned to one core (Bulwark with one worker), the loader to the
other; runs alternate Bulwark, Mosquitto, Bulwark, ... Loopback only, every run bounded.

Bulwark runs with its shipped admission, ban and timeout defaults except that the loopback is no
longer exempt from them (`[admission] exempt = []`, `[bans] exempt = []`: by default the loopback
is trusted, and the attack comes from it here). Mosquitto runs with `max_connections -1` (its
default) and anonymous clients, like Bulwark.

    python3 scripts/bench_flood.py [--reps 3] [--duration 10] [--brokers bulwark,mosquitto]
        [-- extra bench flood options]

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


def start(kind, bins, port, work, core):
    if kind == "bulwark":
        conf = os.path.join(work, "bulwark.toml")
        with open(conf, "w") as f:
            f.write(
                f'[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:{port}"\n'
                "dangerous_allow_anonymous = true\n"
                "[acl]\ndangerous_allow_all = true\n"
                "[admission]\nexempt = []\n"
                "[bans]\nexempt = []\n"
            )
        cmd = [bins["bulwark"], "serve", "--config", conf, "--workers", "1", "--log-level", "error"]
    else:
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n")
        cmd = [bins["mosquitto"], "-c", conf]
    log = open(os.path.join(work, f"{kind}.log"), "w")
    proc = subprocess.Popen(["taskset", "-c", core] + cmd, stdout=log, stderr=log, cwd=work)
    if not wait_port(port, proc):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{kind} did not start on {port}; see {log.name}")
    return proc


def run(kind, bins, a, extra, rep):
    work = tempfile.mkdtemp(prefix=f"flood-{kind}-{rep}-", dir=a.work)
    port = free_port()
    proc = start(kind, bins, port, work, a.broker_core)
    try:
        cmd = ["taskset", "-c", a.loader_core, bins["bulwark"], "bench", "flood",
               "--port", str(port), "--broker-pid", str(proc.pid),
               "--duration", str(a.duration), "-n", str(a.pairs), "--rate", str(a.rate),
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


def ms(us):
    return f"{us / 1000.0:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bulwark", default=os.path.join(ROOT, "target/release/bulwark"))
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--brokers", default="bulwark,mosquitto")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--broker-core", default="0")
    ap.add_argument("--loader-core", default="1")
    ap.add_argument("--work", default=None)
    ap.add_argument("extra", nargs="*", help="more `bench flood` options, after --")
    a = ap.parse_args()
    bins = {"bulwark": a.bulwark, "mosquitto": a.mosquitto}
    brokers = [b for b in a.brokers.split(",") if b]
    results = {b: [] for b in brokers}
    print("| broker | run | p99 undisturbed (ms) | p99 under attack (ms) | ratio | "
          "received undisturbed / attacked (msg/s) | lost | flood accepted / refused | "
          "slowloris opened / closed (slowest, s) / reset while connecting / open at end |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rep in range(a.reps):
        for kind in brokers:
            r = run(kind, bins, a, a.extra, rep)
            f = r["flood"]
            at = f["attack"]
            results[kind].append(r)
            print(f"| {kind} | {rep + 1} | {ms(f['baseline_latency']['p99_us'])} | "
                  f"{ms(r['latency']['p99_us'])} | {f['p99_ratio']:.2f} | "
                  f"{f['baseline_received_per_s']:,.0f} / {r['received_per_s']:,.0f} | "
                  f"{f['baseline_lost']} / {r['lost']} | "
                  f"{at['flood_accepted']:,} / {at['flood_refused']:,} | "
                  f"{at['slowloris_opened']:,} / {at['slowloris_closed']:,} "
                  f"({at['slowloris_longest_s']:.1f}) / {at['slowloris_failed']:,} / "
                  f"{at['slowloris_open_at_end']:,} |",
                  flush=True)
    print()
    print("| broker | median p99 undisturbed (ms) | median p99 under attack (ms) | median ratio |")
    print("|---|---|---|---|")
    for kind in brokers:
        rs = results[kind]
        base = statistics.median(r["flood"]["baseline_latency"]["p99_us"] for r in rs)
        hit = statistics.median(r["latency"]["p99_us"] for r in rs)
        ratio = statistics.median(r["flood"]["p99_ratio"] for r in rs)
        print(f"| {kind} | {ms(base)} | {ms(hit)} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
