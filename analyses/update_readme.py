"""Copy the latest tables of every analysis into analyses/README.md (not an analysis itself).

README.md holds, per analysis, a block

    <!-- table:<name> -->
    ...
    <!-- /table:<name> -->

whose content is replaced by ``analyses/out/<name>/table.md`` (its ``# title`` line dropped and
its headings demoted two levels), so the README shows exactly what the last real run wrote.

Run: ``python analyses/update_readme.py`` (``--check`` exits 1 when the README is out of date).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "analyses" / "README.md"
OUT = ROOT / "analyses" / "out"
BLOCK = re.compile(r"(<!-- table:(?P<name>[\w\-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.S)


def table_of(name: str) -> str:
    path = OUT / name / "table.md"
    if not path.exists():
        return f"*(no output yet: run `python analyses/{name}.py`)*\n"
    lines = path.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    out = []
    for line in lines:
        if line.startswith("#"):
            line = "##" + line
        out.append(line)
    text = "\n".join(out).strip() + "\n"
    return f"*(copied from `analyses/out/{name}/table.md` by `python analyses/update_readme.py`)*\n\n" + text


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + table_of(m.group("name")) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    old = README.read_text()
    new = render(old)
    if args.check:
        return 0 if new == old else 1
    README.write_text(new)
    print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
