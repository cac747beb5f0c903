"""CSV downloads that a spreadsheet cannot execute: the one helper every CSV export uses.

A cell whose text starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read by
Excel, LibreOffice and Google Sheets as a formula (CSV/formula injection: run data -- example ids,
texts, tokens, folder names -- is user-controlled). Such text cells get a leading ``'`` (OWASP's
recommendation), which spreadsheets show as text and do not evaluate. Numbers are left as they are
(``-0.5`` stays a number). Importing this module does not import streamlit.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FORMULA_PREFIXES", "neutralise_cell", "to_safe_csv"]

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would take for a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def to_safe_csv(df: Any, **kwargs: Any) -> str:
    """``df.to_csv(index=False, **kwargs)`` with every text cell (and column name) neutralised."""
    import pandas as pd

    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col].dtype):
            out[col] = out[col].map(neutralise_cell)
    out.columns = [neutralise_cell(c) if isinstance(c, str) else c for c in out.columns]
    kwargs.setdefault("index", False)
    return out.to_csv(**kwargs)
