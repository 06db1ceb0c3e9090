#!/usr/bin/env bash
# The durable configurations only, in short alternating rounds (A B C D A B C D ...), so that
# a shared machine's drifting load and fsync latency fall on every configuration alike.
# Phases A (B=16) and C, PHASE_SECS each (default 15), ROUNDS rounds (default 3).
#
#   tools/store-bench/interleave.sh
#   ROUNDS=5 PHASE_SECS=20 OUT=results/x tools/store-bench/interleave.sh
set -euo pipefail
cd "$(dirname "$0")"

ROUNDS="${ROUNDS:-3}"
PHASE_SECS="${PHASE_SECS:-15}"
DATA_DIR="${DATA_DIR:-/tmp/store-bench-data}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/store-bench-target}"
OUT="${OUT:-results/$(date -u +%Y%m%dT%H%M%SZ)-interleaved}"
mkdir -p "$OUT" "$DATA_DIR"
if [ "$(df -T "$DATA_DIR" | awk 'NR==2 {print $2}')" = "tmpfs" ]; then
  echo "refusing: $DATA_DIR is on tmpfs, where fsync is free" >&2
  exit 1
fi
cargo build --release --quiet
BIN="$CARGO_TARGET_DIR/release/store-bench"

configs=(
  "fjall --durable"
  "fjall --sync-data"
  "redb --durable"
  "redb --durable --redb-quick-repair"
  "sqlite --durable"
)
for r in $(seq 1 "$ROUNDS"); do
  for c in "${configs[@]}"; do
    echo "+ round $r: store-bench $c" | tee -a "$OUT/log.txt"
    # shellcheck disable=SC2086
    "$BIN" $c --batch 16 --phases ac --phase-secs "$PHASE_SECS" --dir "$DATA_DIR" \
      --json "$OUT/results.jsonl" --label "round$r" 2>&1 | tee -a "$OUT/log.txt"
  done
done
python3 summarize.py "$OUT/results.jsonl" | tee "$OUT/summary.md"
