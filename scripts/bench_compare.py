#!/usr/bin/env python3
"""Side-by-side broker comparison: Bulwark, Eclipse Mosquitto and rumqttd, one at a time.

Each scenario runs against a freshly started broker process pinned to one core (taskset), with
`bulwark bench` pinned to the other, REPS times; the medians and Bulwark's ratio to the best peer
are written as a Markdown table (stdout, and into docs/benchmarks.md between the markers
"<!-- bench-compare:begin -->" and "<!-- bench-compare:end -->" with --write).

The TLS scenarios run against a broker with one TLS listener (TLS 1.3; the certificate
authority and the ECDSA P-256 server certificate are made once per run by `bulwark cert`), and
the loader resumes no session (`--tls-no-resume`): every connection is a full handshake. A
broker or scenario that fails is shown as "n/a" with the reason under the table.

Invoked by scripts/bench-compare.sh, which installs the peers first. Loopback only; every run
is bounded by --duration and a timeout.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, bench arguments, figure, unit, target rule[, "tls"]). New scenarios go at the end, so
# that --only indexes stay the same.
SCENARIOS = [
    ("fan-in QoS 0, 100 to 1", ["fan-in", "--qos", "0", "-n", "100"], "recv", "msg/s", ">= 1.2x best peer"),
    ("fan-in QoS 1, 100 to 1", ["fan-in", "--qos", "1", "-n", "100"], "recv", "msg/s", "(no target)"),
    ("pairs QoS 0, 100 pairs", ["pairs", "--qos", "0", "-n", "100"], "recv", "msg/s", "(no target)"),
    ("pairs QoS 1, 100 pairs", ["pairs", "--qos", "1", "-n", "100"], "recv", "msg/s", ">= 1.2x best peer"),
    ("pairs QoS 2, 100 pairs", ["pairs", "--qos", "2", "-n", "100"], "recv", "msg/s", ">= 1.2x best peer"),
    ("fan-out QoS 0, 1 to 1,000", ["fan-out", "--qos", "0", "-n", "1000"], "recv", "deliveries/s", ">= best peer"),
    ("QoS 1 at 10k msg/s, p99 latency", ["latency", "--qos", "1", "-n", "100", "--rate", "10000"], "p99", "ms", "<= Mosquitto"),
    ("memory per idle connection (10,000)", ["conn", "-n", "10000", "--workers", "32"], "mem", "KB", "<= 1 KB"),
    ("connections per second (churn, 16 workers)", ["churn", "--workers", "16"], "churn", "conn/s", ">= Mosquitto"),
    ("TLS 1.3 handshakes per second (churn over TLS, 16 workers)", ["churn", "--workers", "16"], "churn", "conn/s",
     ">= 2x Mosquitto", "tls"),
    ("pairs QoS 1 over TLS, 100 pairs", ["pairs", "--qos", "1", "-n", "100"], "recv", "msg/s", ">= 1.2x best peer", "tls"),
    ("memory per idle TLS connection (10,000)", ["conn", "-n", "10000", "--workers", "32"], "mem", "KB", "(report)",
     "tls"),
]


def is_tls(scenario):
    return len(scenario) > 5 and scenario[5] == "tls"


def make_certs(bulwark, work):
    """A certificate authority and an ECDSA P-256 server certificate for localhost and
    127.0.0.1, made by Bulwark itself. Returns {"ca", "cert" (the chain), "key"}."""
    certs = os.path.join(work, "certs")
    for cmd in (
        [bulwark, "cert", "ca", "--out", certs],
        [bulwark, "cert", "server", "--name", "localhost", "--name", "127.0.0.1", "--ca-dir", certs,
         "--out", certs],
    ):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")
    paths = {"ca": "ca.pem", "cert": "server.pem", "key": "server.key"}
    paths = {k: os.path.join(certs, v) for k, v in paths.items()}
    for path in paths.values():
        if not os.path.isfile(path):
            raise RuntimeError(f"bulwark cert did not write {path}")
    return paths


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def toml_str(value):
    return json.dumps(value)  # a JSON string is a valid TOML basic string


# Bulwark runs as users run it: a password user, an ACL and the durable store (sync
# "always"); the peers run as they ship, anonymous and in memory. `--bulwark-bare` runs
# Bulwark anonymous without ACL or store instead, for a like-for-like look at the message path.
BENCH_USER = "bench"
BENCH_PASSWORD = "violet-Harbour-lantern-93"
BENCH_ACL = os.path.join(ROOT, "scripts", "bench-acl.toml")


def secure_files(bulwark, work, kind):
    """A password file with the bench user and an ACL, both 0600, in a fresh directory; returns
    the TOML lines that use them and a durable store there."""
    d = tempfile.mkdtemp(prefix=f"{kind}-", dir=work)
    passwords = os.path.join(d, "passwords.toml")
    acl = os.path.join(d, "acl.toml")
    out = subprocess.run([bulwark, "user", "add", BENCH_USER, "--password-stdin", "--file", passwords],
                         input=BENCH_PASSWORD + "\n", capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"bulwark user add failed ({out.returncode}): {out.stderr[-2000:]}")
    shutil.copyfile(BENCH_ACL, acl)
    os.chmod(acl, 0o600)
    return (f"[auth]\npassword_file = {toml_str(passwords)}\n[acl]\nfile = {toml_str(acl)}\n"
            f"[storage]\npath = {toml_str(os.path.join(d, 'store.redb'))}\n")


def start_broker(kind, bins, port, work, broker_core, tls=None, secure=True):
    """Starts `kind` listening on 127.0.0.1:port: plain MQTT, or with `tls` (make_certs's paths)
    MQTT over TLS only. Bulwark (and `baseline`) with `secure`: see `secure_files`."""
    if kind in ("bulwark", "baseline"):
        conf = os.path.join(work, f"{kind}.toml")
        with open(conf, "w") as f:
            f.write(f'[[listener]]\nkind = "{"tls" if tls else "tcp"}"\nbind = "127.0.0.1:{port}"\n')
            if not secure:
                f.write("dangerous_allow_anonymous = true\n")
            if tls is not None:
                f.write(f'[listener.tls]\ncert = {toml_str(tls["cert"])}\nkey = {toml_str(tls["key"])}\n'
                        'min_version = "1.3"\n')
            if secure:
                f.write(secure_files(bins["bulwark"], work, kind))
            else:
                f.write('[acl]\ndangerous_allow_all = true\n[storage]\nkind = "memory"\n')
        cmd = [bins[kind], "serve", "--config", conf, "--log-level", "warn"]
    elif kind == "mosquitto":
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n")
            if tls is not None:
                f.write(f"cafile {tls['ca']}\ncertfile {tls['cert']}\nkeyfile {tls['key']}\n"
                        "tls_version tlsv1.3\n"
                        # Without it Nagle holds the CONNACK behind the TLS 1.3 session tickets
                        # until the client's delayed ACK (about 40 ms a handshake), which would
                        # measure the stall, not Mosquitto.
                        "set_tcp_nodelay true\n")
                if os.geteuid() == 0:
                    # As root, Mosquitto drops to the "mosquitto" user before it reads the
                    # certificate files, which `bulwark cert` makes readable by their owner only.
                    f.write("user root\n")
        cmd = [bins["mosquitto"], "-c", conf]
    else:
        conf = os.path.join(work, "rumqttd.toml")
        with open(conf, "w") as f:
            f.write(
                "id = 0\n[router]\nid = 0\nmax_connections = 20010\nmax_outgoing_packet_count = 200\n"
                "max_segment_size = 104857600\nmax_segment_count = 10\n"
                f'[v4.1]\nname = "v4-1"\nlisten = "127.0.0.1:{port}"\nnext_connection_delay_ms = 0\n'
                "[v4.1.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 20480\n"
                "max_inflight_count = 100\ndynamic_filters = true\n"
            )
            if tls is not None:
                # rumqttd's rustls listener (TLS 1.3 and 1.2); without its verify-client-cert
                # feature no CA is needed.
                f.write(f"[v4.1.tls]\ncertpath = {toml_str(tls['cert'])}\nkeypath = {toml_str(tls['key'])}\n")
        cmd = [bins["rumqttd"], "-c", conf, "-q"]
    log = open(os.path.join(work, f"{kind}.log"), "w")
    proc = subprocess.Popen(["taskset", "-c", broker_core] + cmd, stdout=log, stderr=log)
    if not wait_port(port, proc):
        proc.kill()
        proc.wait()
        log.close()
        with open(log.name) as f:
            tail = " / ".join(line.strip() for line in f.read().strip().splitlines()[-3:])
        raise RuntimeError(f"{kind} did not start listening on {port}: {tail or 'no output'}")
    return proc


def run_bench(bins, args, port, pid, duration, loader_core, tls=None, login=False):
    cmd = ["taskset", "-c", loader_core, bins["bulwark"], "bench"] + args + [
        "--port", str(port), "--broker-pid", str(pid), "--duration", str(duration),
        "--no-progress", "--json",
    ]
    if login:
        cmd += ["--username", BENCH_USER, "--password", BENCH_PASSWORD]
    if tls is not None:
        # 127.0.0.1 is one of the certificate's names; no resumption: full handshakes.
        cmd += ["--tls", "--ca", tls["ca"], "--tls-no-resume"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    if out.returncode != 0:
        raise RuntimeError(f"bench failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def figure(report, kind):
    if kind == "recv":
        return report["received_per_s"]
    if kind == "p99":
        return report["latency"]["p99_us"] / 1000.0
    if kind == "mem":
        return report["memory"]["per_connection_bytes"] / 1000.0
    if kind == "churn":
        return report["connect"]["per_second"]
    raise ValueError(kind)


def version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except Exception as err:  # a missing peer is reported, not fatal
        return f"unknown ({err})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bulwark", default=os.path.join(ROOT, "target/release/bulwark"))
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--rumqttd", default=shutil.which("rumqttd") or "rumqttd")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--brokers", default="mosquitto,rumqttd,bulwark")
    ap.add_argument("--only", default="", help="comma-separated scenario indexes (0-based)")
    ap.add_argument("--bulwark-bare", action="store_true",
                    help="run Bulwark anonymous, without ACL and durable store, as the peers run")
    ap.add_argument("--batched", action="store_true",
                    help="publishers write up to 256 PUBLISHes at once (not device-like; labelled)")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("--baseline", help="another Bulwark binary (say, built from an older commit), "
                    "run as broker 'baseline' with Bulwark's settings: `--brokers baseline,bulwark "
                    "--baseline OLD` compares two builds side by side (the loader is --bulwark's)")
    a = ap.parse_args()
    bins = {"bulwark": a.bulwark, "mosquitto": a.mosquitto, "rumqttd": a.rumqttd,
            "baseline": a.baseline}
    if "baseline" in a.brokers.split(",") and not a.baseline:
        ap.error("--brokers baseline needs --baseline PATH")
    brokers = a.brokers.split(",")
    cores = os.sched_getaffinity(0)
    broker_core, loader_core = (str(min(cores)), str(max(cores))) if len(cores) > 1 else ("0", "0")
    scenarios = SCENARIOS
    if a.only:
        scenarios = [SCENARIOS[int(i)] for i in a.only.split(",")]
    work = tempfile.mkdtemp(prefix="bench-compare-")
    tls = make_certs(bins["bulwark"], work) if any(is_tls(s) for s in scenarios) else None
    results = {}
    loader_cpu = {}  # (scenario, broker) -> median loader CPU % (throughput scenarios)
    failures = {}  # (scenario, broker) -> why there is no figure
    for scenario in scenarios:
        name, args, kind, unit, target = scenario[:5]
        scenario_tls = tls if is_tls(scenario) else None
        for broker in brokers:
            values = []
            cpus = []
            try:
                for rep in range(a.reps):
                    port = free_port()
                    ours = broker in ("bulwark", "baseline")
                    secure = ours and not a.bulwark_bare
                    proc = start_broker(broker, bins, port, work, broker_core, scenario_tls, secure)
                    try:
                        time.sleep(0.5)
                        duration = 3 if kind == "mem" else a.duration
                        bench_args = args + (["--batched"] if a.batched and kind == "recv" else [])
                        report = run_bench(bins, bench_args, port, proc.pid, duration, loader_core,
                                           scenario_tls, login=secure)
                        values.append(figure(report, kind))
                        cpus.append(report.get("loader_cpu_percent") or 0)
                        extra = ""
                        if report.get("lost"):
                            extra = f" lost {report['lost']}"
                        if report.get("errors"):
                            extra += f" errors {report['errors']} (first: {report.get('first_error')})"
                        print(f"{name} | {broker} | rep {rep + 1}: {values[-1]:,.2f} {unit}{extra} "
                              f"(broker cpu {report.get('broker_cpu_percent') or 0:.0f}%, "
                              f"loader cpu {report.get('loader_cpu_percent') or 0:.0f}%)",
                              file=sys.stderr, flush=True)
                    finally:
                        proc.terminate()
                        try:
                            proc.wait(timeout=10)
                        except subprocess.TimeoutExpired:
                            proc.kill()
            except (RuntimeError, subprocess.TimeoutExpired, ValueError, KeyError, TypeError) as err:
                # One broker that cannot run a scenario (e.g. no TLS) does not stop the others.
                reason = str(err).strip().splitlines()
                failures[(name, broker)] = reason[-1] if reason else type(err).__name__
                print(f"{name} | {broker} | failed: {err}", file=sys.stderr, flush=True)
                continue
            results[(name, broker)] = statistics.median(values)
            if kind in ("recv", "churn"):  # throughput: a saturated loader caps the figure
                loader_cpu[(name, broker)] = statistics.median(cpus)
    lines = []
    lines.append(f"Run {datetime.date.today().isoformat()} on {platform.node() or 'this machine'}: "
                 f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
                 f"broker on core {broker_core}, loader on core {loader_core}; "
                 f"median of {a.reps} runs, each on a fresh broker process, {a.duration} s measured "
                 "after 2 s of warm-up, 64 B payloads, MQTT 3.1.1, "
                 + ("publishers batching up to 256 PUBLISHes per write (`--batched`, not device-like). "
                    if a.batched else "one write per PUBLISH as devices write. ")
                 + ("Bulwark bare: anonymous, no ACL, no durable store (`--bulwark-bare`)."
                    if a.bulwark_bare else
                    "Bulwark as users run it: every client logs in with a password (argon2id), an "
                    "ACL decides every publish and subscribe, the durable store is on (sync "
                    "\"always\"); the peers as they ship: anonymous, in memory."))
    if tls is not None:
        lines[-1] += (" TLS rows: one TLS listener per broker (TLS 1.3 as the minimum where the broker "
                      "has the setting), an ECDSA P-256 server certificate made by `bulwark cert`, "
                      "the loader verifying it and resuming no session, so every connection is a "
                      "full handshake.")
    lines.append("")
    versions = {"bulwark": [bins["bulwark"], "--version"], "baseline": [bins["baseline"], "--version"],
                "mosquitto": [bins["mosquitto"], "-h"], "rumqttd": [bins["rumqttd"], "--version"]}
    lines.append("Versions: " + "; ".join(f"{b}: {version(versions[b])}" for b in brokers) + ".")
    lines.append("")
    flags = "".join(f" {f}" for f, on in (("--bulwark-bare", a.bulwark_bare), ("--batched", a.batched),
                                           ("--write", a.write)) if on)
    lines.append(f"Command: `bash scripts/bench-compare.sh{flags}`")
    lines.append("")
    versus = "baseline" if brokers == ["baseline", "bulwark"] else "best peer"
    header = "| scenario | " + " | ".join(brokers) + f" | Bulwark vs {versus} | target |"
    lines.append(header)
    lines.append("|" + "---|" * (len(brokers) + 3))
    for scenario in scenarios:
        name, args, kind, unit, target = scenario[:5]
        cells = []
        for broker in brokers:
            v = results.get((name, broker))
            if v is None and (name, broker) in failures:
                cells.append("n/a")
                continue
            cells.append("-" if v is None else (f"{v:,.2f} {unit}" if kind in ("p99", "mem") else f"{v:,.0f} {unit}"))
        ours = results.get((name, "bulwark"))
        peers = [results[(name, b)] for b in brokers if b != "bulwark" and (name, b) in results]
        ratio = "-"
        if ours is not None and peers:
            lower_is_better = kind in ("p99", "mem")
            best = min(peers) if lower_is_better else max(peers)
            if best > 0 and ours > 0:
                r = (best / ours) if lower_is_better else (ours / best)
                ratio = f"{r:.2f}x" + (" (lower is better)" if lower_is_better else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} | {target} |")
    bound = [(k, v) for k, v in loader_cpu.items() if v >= 85]
    if failures or bound:
        lines.append("")
        for (name, broker), why in failures.items():
            lines.append(f"- n/a, {broker}, {name}: {why}")
        for (name, broker), cpu in bound:
            lines.append(f"- loader-bound ({cpu:.0f} % of its core): {broker}, {name}; the figure is a "
                         "lower bound for the broker")
    table = "\n".join(lines)
    print(table)
    if a.write:
        path = os.path.join(ROOT, "docs/benchmarks.md")
        text = open(path).read()
        begin, end = "<!-- bench-compare:begin -->", "<!-- bench-compare:end -->"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            _, tail = rest.split(end, 1)
            text = head + begin + "\n" + table + "\n" + end + tail
            open(path, "w").write(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
