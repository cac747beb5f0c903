#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# test,ray: the Ray engine's tests run too (tests/test_ray_engine.py)
source "$ROOT/scripts/setup.sh" test,ray
cd "$ROOT"
# Debian's Chromium for the browser tests (skipped with a reason when it cannot be installed).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
    || echo "[test] could not install chromium; browser tests will be skipped"
fi
exec python -m pytest "$@"
