#!/usr/bin/env bash
# Runs every configuration of store-bench REPEATS times (default 2), engines interleaved
# within each repeat so that drift in a shared machine's load spreads over all of them.
# Writes results/<stamp>/results.jsonl, env.txt and log.txt, then prints the summary.
#
#   tools/store-bench/run-all.sh                 # everything, twice (~45 min on 2 cores)
#   REPEATS=1 PHASE_SECS=20 tools/store-bench/run-all.sh    # a quicker pass
#   DATA_DIR=/var/tmp/sb tools/store-bench/run-all.sh       # stores elsewhere (real disk!)
set -euo pipefail
cd "$(dirname "$0")"

REPEATS="${REPEATS:-2}"
PHASE_SECS="${PHASE_SECS:-60}"
DATA_DIR="${DATA_DIR:-/tmp/store-bench-data}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/store-bench-target}"
OUT="${OUT:-results/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT" "$DATA_DIR"
JSON="$OUT/results.jsonl"
LOG="$OUT/log.txt"

fstype=$(df -T "$DATA_DIR" | awk 'NR==2 {print $2}')
if [ "$fstype" = "tmpfs" ]; then
  echo "refusing: $DATA_DIR is on tmpfs, where fsync is free; set DATA_DIR to a real disk" >&2
  exit 1
fi

cargo build --release --quiet
BIN="$CARGO_TARGET_DIR/release/store-bench"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "uname: $(uname -srm)"
  echo "cpus: $(nproc)"
  echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "data dir: $DATA_DIR"
  df -hT "$DATA_DIR" | sed 's/^/df: /'
  findmnt -no SOURCE,FSTYPE,OPTIONS -T "$DATA_DIR" | sed 's/^/mount: /'
  # Raw cost of a small synchronous write on this filesystem (dd, O_DSYNC).
  probe="$DATA_DIR/fsync-probe.$$"
  echo "dd 4 KiB O_DSYNC appends, 500 writes: $(dd if=/dev/zero of="$probe" bs=4k count=500 oflag=dsync 2>&1 | tail -1)"
  echo "dd 4 KiB O_DSYNC overwrites, 500 writes: $(dd if=/dev/zero of="$probe" bs=4k count=500 oflag=dsync conv=notrunc 2>&1 | tail -1)"
  rm -f "$probe"
  echo "rustc: $(rustc --version)"
  grep -A1 -E '^name = "(fjall|lsm-tree|redb|rusqlite|libsqlite3-sys)"$' Cargo.lock | paste - - - | awk '{print "crate: " $3 " " $6}' | tr -d '"'
} | tee "$OUT/env.txt"

run() {
  echo "+ store-bench $*" | tee -a "$LOG"
  "$BIN" "$@" --dir "$DATA_DIR" --json "$JSON" --phase-secs "$PHASE_SECS" 2>&1 | tee -a "$LOG"
}

configs=(
  "fjall --durable"
  "redb --durable"
  "sqlite --durable"
  "sqlite --normal"
  "fjall --sync-data"
  "fjall --no-sync"
  "redb --no-sync"
  "sqlite --no-sync"
)

for r in $(seq 1 "$REPEATS"); do
  for c in "${configs[@]}"; do
    # shellcheck disable=SC2086
    for b in 1 16 256; do run $c --batch "$b" --phases ab --label "run$r"; done
    # shellcheck disable=SC2086
    run $c --batch 16 --phases cdr --label "run$r"
  done
  # redb with quick-repair: what it costs per commit and what it saves on recovery.
  run redb --durable --redb-quick-repair --batch 16 --phases abcr --label "run$r"
  echo "loadavg after run $r: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/env.txt"
done

python3 summarize.py "$JSON" | tee "$OUT/summary.md"
