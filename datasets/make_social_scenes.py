#!/usr/bin/env python
"""Regenerate the synthetic social scenes of the set decoder (seeded, deterministic).

    python datasets/make_social_scenes.py            # writes the package data
    python datasets/make_social_scenes.py --check    # exit 1 if a committed file is stale

Writes ``social-scenes-<split>.jsonl`` (train 1,600 / validation 200 / test 400 scenes; fields id,
x, y, heading, speed, action, groups, activities) into ``attnexplain/data/synthetic_data/``
(package data: what ``attnexplain.data.social_scenes.load_scenes(split)`` reads). The generator and
the grouping rule live in ``attnexplain/data/social_scenes.py``; see its docstring.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attnexplain.data.social_scenes import SPLIT_SIZES, generate_split, group_sizes, scenes_file, write_scenes  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = ap.parse_args(argv)
    stale = 0
    for split in SPLIT_SIZES:
        scenes = generate_split(split)
        path = scenes_file(split)
        with tempfile.TemporaryDirectory() as tmp:
            fresh = write_scenes(scenes, Path(tmp) / path.name).read_bytes()
        if args.check:
            if not path.exists() or path.read_bytes() != fresh:
                print(f"stale: {path}", file=sys.stderr)
                stale += 1
            continue
        write_scenes(scenes, path)
        print(f"wrote {path.relative_to(ROOT)} ({len(scenes)} scenes, {sum(s.n for s in scenes)} individuals, "
              f"group sizes {group_sizes(scenes)}, {path.stat().st_size / 1024:.0f} KiB)")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
