#!/usr/bin/env python3
"""ACL checks on against off, side by side: the same Bulwark binary, fan-in and pairs, with
authorization off and with an ACL file of 48 rules (44 for other users and groups, a deny, and
the templates and allows a device fleet would have), runs interleaved (off, on, off, on, ...)
so that the machine's drift hits both alike. The broker is pinned to one core with one worker,
the loader to another; loopback only, every run bounded.

    python3 scripts/bench_acl.py [--reps 3] [--duration 10]

Prints a Markdown table of every run and the median ratio on/off (docs/benchmarks.md).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCENARIOS = [
    ("fan-in QoS 0, 100 to 1", ["fan-in", "--qos", "0", "-n", "100"]),
    ("fan-in QoS 1, 100 to 1", ["fan-in", "--qos", "1", "-n", "100"]),
    ("pairs QoS 1, 100 pairs", ["pairs", "--qos", "1", "-n", "100"]),
]


def acl_text():
    rules = []
    for i in range(22):
        rules.append(f'[[rule]]\npermission = "allow"\naction = "all"\nuser = "user-{i}"\n'
                     f'topic = "customers/{i}/#"\n')
        rules.append(f'[[rule]]\npermission = "allow"\naction = "subscribe"\ngroup = "team-{i}"\n'
                     f'topic = "reports/{i}/+"\n')
    rules.append('[[rule]]\npermission = "deny"\naction = "all"\nclients = "any"\n'
                 'topic = "bench/secret/#"\n')
    rules.append('[[rule]]\npermission = "allow"\naction = "publish"\nclients = "any"\n'
                 'topics = ["devices/{client_id}/#", "telemetry/{client_id}/+"]\n')
    rules.append('[[rule]]\npermission = "allow"\naction = "subscribe"\nclients = "any"\n'
                 'topic = "commands/{client_id}"\n')
    rules.append('[[rule]]\npermission = "allow"\naction = "all"\nclients = "any"\n'
                 'topic = "bench/#"\n')
    return "\n".join(rules)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"broker not listening on {port}")


def run(binary, work, acl_on, args, duration, broker_core, loader_core):
    data = os.path.join(work, "on" if acl_on else "off")
    os.makedirs(data, exist_ok=True)
    if acl_on:
        with open(os.path.join(data, "acl.toml"), "w") as f:
            f.write(acl_text())
    port = free_port()
    # --listen uses the data directory's acl.toml when there is one; without it, no ACL.
    broker = subprocess.Popen(
        ["taskset", "-c", broker_core, binary, "serve", "--listen", f"127.0.0.1:{port}",
         "--dangerous-allow-anonymous", "--workers", "1", "--data-dir", data,
         "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        out = subprocess.run(
            ["taskset", "-c", loader_core, binary, "bench"] + args +
            ["--port", str(port), "--broker-pid", str(broker.pid), "--duration", str(duration),
             "--no-progress", "--json"],
            capture_output=True, text=True, timeout=duration + 120)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        return json.loads(out.stdout)["received_per_s"]
    finally:
        broker.terminate()
        broker.wait(timeout=10)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bulwark", default=os.path.join(ROOT, "target/release/bulwark"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--broker-core", default="0")
    ap.add_argument("--loader-core", default="1")
    a = ap.parse_args()
    print("| scenario | ACL off (msg/s) | ACL on, 48 rules (msg/s) | on / off (median) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for name, args in SCENARIOS:
            off, on = [], []
            for _ in range(a.reps):
                off.append(run(a.bulwark, work, False, args, a.duration, a.broker_core, a.loader_core))
                on.append(run(a.bulwark, work, True, args, a.duration, a.broker_core, a.loader_core))
            ratio = statistics.median(on) / statistics.median(off)
            fmt = lambda xs: " / ".join(f"{x:,.0f}" for x in xs)
            print(f"| {name} | {fmt(off)} | {fmt(on)} | {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    main()
