#!/usr/bin/env python
"""Regenerate the synthetic tasks with gold rationales (seeded, deterministic).

    python datasets/make_synthetic.py            # writes the package data
    python datasets/make_synthetic.py --check    # exit 1 if a committed file is stale

Writes ``<task>.jsonl`` (fields id, text, label, label_name, split, rationale; rationale = word
indices into text.split()) into ``attnexplain/data/synthetic_data/`` (package data: the one copy,
what ``attnexplain.data.load_dataset("<task>")`` reads). The generators live in
``attnexplain/data/synthetic.py``; see its docstring for what each task tests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attnexplain.data.synthetic import DEFAULT_SEED, DEFAULT_SIZE, SYNTHETIC_TASKS, generate, write_jsonl  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=DEFAULT_SIZE, help="examples per task")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = ap.parse_args(argv)
    targets = [ROOT / "attnexplain" / "data" / "synthetic_data"]
    stale = 0
    for task in SYNTHETIC_TASKS:
        rows = generate(task, n=args.n, seed=args.seed)
        with tempfile.TemporaryDirectory() as tmp:
            fresh = write_jsonl(rows, Path(tmp) / f"{task}.jsonl").read_bytes()
        for folder in targets:
            path = folder / f"{task}.jsonl"
            if args.check:
                if not path.exists() or path.read_bytes() != fresh:
                    print(f"stale: {path}", file=sys.stderr)
                    stale += 1
                continue
            write_jsonl(rows, path)
            print(f"wrote {path.relative_to(ROOT)} ({len(rows)} rows, {path.stat().st_size / 1024:.0f} KiB)")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
