"""The one Markdown table formatter (reports, backend comparisons, analyses)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def format_markdown_table(df: Any, *, headers: Mapping[str, str] | None = None, digits: int = 3,
                          sci: Sequence[str] = (), missing: str = "") -> str:
    """A DataFrame as a GitHub Markdown table (floats to ``digits`` decimals, the columns in ``sci``
    in scientific notation ``1.2e-07`` where decimals would hide small values; None and NaN as
    ``missing``, default an empty cell; numeric columns right-aligned; ``|`` in text escaped)."""
    headers = dict(headers or {})
    sci = set(sci)
    from pandas.api.types import is_numeric_dtype

    cols = list(df.columns)
    out = ["| " + " | ".join(headers.get(c, str(c)) for c in cols) + " |",
           "|" + "|".join("---:" if is_numeric_dtype(df[c]) else "---" for c in cols) + "|"]
    from pandas.api.types import is_integer_dtype

    columns = {c: df[c].tolist() for c in cols}
    ints = {c for c in cols if is_integer_dtype(df[c])}
    for r in range(len(df)):
        cells = []
        for c in cols:
            v = columns[c][r]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append(missing)
            elif c in ints:
                cells.append(str(int(v)))
            elif isinstance(v, (float, np.floating)):
                cells.append(f"{float(v):.1e}" if c in sci else f"{float(v):.{digits}f}")
            else:
                cells.append(str(v).replace("|", "\\|"))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)
