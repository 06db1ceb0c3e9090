#!/usr/bin/env python3
"""Login storms on a fresh broker, Bulwark and Mosquitto side by side: `bulwark bench conn`
opens 10,000 connections, 100 at a time, each with a username and password, first all as one
user (a fleet of one account reconnecting after a restart), then each as a user of its own
(`--username 'device-{i}'`: one login per device).

Each broker is a fresh process for every run (nothing cached), pinned to one core (Bulwark with
one worker, so one password-hashing thread), the loader to the other. Bulwark runs as users run
it: its password store (argon2id at the default parameters), an ACL file, the durable store on,
admission and ban defaults (the loopback exempt from them, as shipped; the login guard does not
count logins under way, so it needs no exemption here). Mosquitto runs with a password file
from `mosquitto_passwd` (its sha512-pbkdf2 hashes), `allow_anonymous false`, persistence on.

    python3 scripts/bench_logins.py [--reps 3] [-n 10000] [--workers 100]
        [--brokers bulwark,mosquitto] [--bulwark PATH] [--mosquitto PATH]

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
PASSWORD = "violet-Harbour-lantern-93"


def bulwark_store(bulwark, work, users):
    """A password store with `fleet` and device-0 ... device-{users-1}, all with PASSWORD.

    One argon2id hash (from `bulwark user add`) is written for every user: checking it costs
    the same as checking a hash of one's own, and hashing 10,000 passwords first would take
    minutes."""
    path = os.path.join(work, "passwords.toml")
    subprocess.run(
        [bulwark, "user", "add", "fleet", "--password-stdin", "--file", path],
        input=PASSWORD + "\n", text=True, check=True, capture_output=True)
    text = open(path).read()
    start = text.index("[[user]]")
    entry = text[start:]
    lines = [line for line in entry.splitlines() if not line.startswith("scram_")]
    entry = "\n".join(lines) + "\n"
    with open(path, "a") as f:
        for i in range(users):
            f.write("\n" + entry.replace('name = "fleet"', f'name = "device-{i}"'))
    os.chmod(path, 0o600)
    return path


def mosquitto_store(work, users):
    path = os.path.join(work, "mosquitto.passwd")
    with open(path, "w") as f:
        f.write(f"fleet:{PASSWORD}\n")
        for i in range(users):
            f.write(f"device-{i}:{PASSWORD}\n")
    subprocess.run(["mosquitto_passwd", "-U", path], check=True)
    return path


def start(kind, bins, port, work, core, users):
    if kind == "bulwark":
        store = bulwark_store(bins["bulwark"], work, users)
        acl = os.path.join(work, "acl.toml")
        with open(acl, "w") as f:
            f.write('[[rule]]\npermission = "allow"\naction = "all"\n'
                    'topic = "devices/{username}/#"\n')
        conf = os.path.join(work, "bulwark.toml")
        with open(conf, "w") as f:
            f.write(
                f'[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:{port}"\n'
                f'[acl]\nfile = "{acl}"\n'
                f'[auth]\npassword_file = "{store}"\n'
                f'[storage]\npath = "{os.path.join(work, "store.redb")}"\n'
            )
        cmd = [bins["bulwark"], "serve", "--config", conf, "--workers", "1",
               "--data-dir", work, "--log-level", "error"]
    else:
        store = mosquitto_store(work, users)
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                    f"password_file {store}\nmax_connections -1\n"
                    f"persistence true\npersistence_location {work}/\n")
            if os.geteuid() == 0:
                # Started as root, Mosquitto drops to the user `mosquitto`, which cannot read
                # the temporary directory.
                f.write("user root\n")
        cmd = [bins["mosquitto"], "-c", conf]
    log = open(os.path.join(work, f"{kind}.log"), "w")
    proc = subprocess.Popen(["taskset", "-c", core] + cmd, stdout=log, stderr=log, cwd=work)
    if not wait_port(port, proc):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{kind} did not start on {port}; see {log.name}")
    return proc


def run(kind, bins, a, storm, rep):
    slug = storm.replace(" ", "-")
    work = tempfile.mkdtemp(prefix=f"logins-{kind}-{slug}-{rep}-", dir=a.work)
    port = free_port()
    proc = start(kind, bins, port, work, a.broker_core, a.n)
    try:
        username = "fleet" if storm == "one user" else "device-{i}"
        cmd = ["taskset", "-c", a.loader_core, bins["bulwark"], "bench", "conn",
               "--port", str(port), "--broker-pid", str(proc.pid),
               "-n", str(a.n), "--workers", str(a.workers), "--duration", "1",
               "--username", username, "--password", PASSWORD,
               "--no-progress", "--json"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("-n", type=int, default=10000)
    p.add_argument("--workers", type=int, default=100)
    p.add_argument("--brokers", default="bulwark,mosquitto")
    p.add_argument("--bulwark", default=os.path.join(ROOT, "target", "release", "bulwark"))
    p.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    p.add_argument("--broker-core", default="0")
    p.add_argument("--loader-core", default="1")
    p.add_argument("--work", default=None)
    a = p.parse_args()
    bins = {"bulwark": a.bulwark, "mosquitto": a.mosquitto}
    brokers = a.brokers.split(",")
    rows = []
    for storm in ["one user", "distinct users"]:
        for rep in range(a.reps):
            for kind in brokers:
                r = run(kind, bins, a, storm, rep)
                c = r["connect"]
                lat = c["latency"] or {}
                row = {
                    "storm": storm, "broker": kind, "rep": rep,
                    "connected": c["connected"], "failed": c["failed"],
                    "elapsed_s": c["elapsed_s"], "per_s": c["per_second"],
                    "p50_ms": lat.get("p50_us", 0) / 1000, "p99_ms": lat.get("p99_us", 0) / 1000,
                    "max_ms": lat.get("max_us", 0) / 1000,
                    "cpu": r.get("broker_cpu_percent"),
                    "error": r.get("first_error"),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| storm | broker | run | connected | refused | all in after | per second | p50 | p99 | max |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['storm']} | {r['broker']} | {r['rep'] + 1} | {r['connected']} | {r['failed']} "
              f"| {r['elapsed_s']:.1f} s | {r['per_s']:.0f} | {r['p50_ms']:.1f} ms "
              f"| {r['p99_ms']:.1f} ms | {r['max_ms']:.0f} ms |")
    print()
    print("Medians:")
    print()
    print("| storm | broker | connected | all in after | per second | p99 |")
    print("|---|---|---|---|---|---|")
    for storm in ["one user", "distinct users"]:
        for kind in brokers:
            rs = [r for r in rows if r["storm"] == storm and r["broker"] == kind]
            if not rs:
                continue
            med = lambda key: statistics.median(r[key] for r in rs)
            print(f"| {storm} | {kind} | {med('connected'):.0f} | {med('elapsed_s'):.1f} s "
                  f"| {med('per_s'):.0f} | {med('p99_ms'):.1f} ms |")


if __name__ == "__main__":
    main()
