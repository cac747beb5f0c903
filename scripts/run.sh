#!/usr/bin/env bash
# The README's main command: set up, prepare the default classifier (once), analyze the
# rotten-tomatoes test split into a run folder, write its report, and open the dashboard.
#
#   scripts/run.sh                         # 500 examples, then the dashboard on http://127.0.0.1:8501
#   LIMIT=2000 FORCE=1 scripts/run.sh      # another size (FORCE=1 replaces the previous run)
#   ATTNEXPLAIN_NO_DASHBOARD=1 scripts/run.sh
#
# Idempotent: a second call reuses the prepared model, resumes an interrupted analyze (or does
# nothing if it is complete), rewrites the report and starts the dashboard.
# Environment: LIMIT (500), MODEL (minilm-rotten-tomatoes), DATASET (rotten-tomatoes), SPLIT (test),
# RUN (runs/<dataset>-dense), FORCE (unset), ATTNEXPLAIN_THREADS (torch threads; 1 is often fastest
# on a busy machine), PORT (8501), ATTNEXPLAIN_NO_DASHBOARD (unset).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"

MODEL="${MODEL:-minilm-rotten-tomatoes}"
DATASET="${DATASET:-rotten-tomatoes}"
SPLIT="${SPLIT:-test}"
LIMIT="${LIMIT:-500}"
RUN="${RUN:-runs/${DATASET}-dense}"

CACHE="${ATTNEXPLAIN_CACHE:-$HOME/.cache/attnexplain}"
if [ ! -f "$CACHE/models/$MODEL/config.json" ]; then
  echo "[run] preparing $MODEL (once; cached in $CACHE/models/$MODEL)"
  attnexplain prepare --model "$MODEL"
fi

echo "[run] analyzing $DATASET/$SPLIT (first $LIMIT examples) into $RUN"
attnexplain analyze --model "$MODEL" --dataset "$DATASET" --split "$SPLIT" --limit "$LIMIT" --out "$RUN" ${FORCE:+--force}

attnexplain report "$RUN"

if [ "${ATTNEXPLAIN_NO_DASHBOARD:-0}" = "1" ]; then
  echo "[run] done (dashboard skipped: ATTNEXPLAIN_NO_DASHBOARD=1); open it with: attnexplain dashboard runs"
  exit 0
fi
exec attnexplain dashboard runs --port "${PORT:-8501}"
