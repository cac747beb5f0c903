"""Dashboard widgets: the sidebar's export choices, plotly figures shown with HTML / CSV
downloads (generated on click), and text escaping for markdown."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st
from attnexplain.dashboard.csv_export import to_safe_csv

# ------------------------------------------------------------------------------------------
# figures with downloads
# ------------------------------------------------------------------------------------------


def image_format() -> str:
    return st.session_state.get("ax_image_format", "png")


def long_input_mode() -> str:
    return st.session_state.get("ax_long_mode", "pool")


def plot_config(name: str) -> dict:
    """plotly.js config: the modebar camera button downloads ``name`` as PNG or SVG (sidebar choice)."""
    fmt = image_format()
    opts: dict[str, Any] = {"format": fmt, "filename": name}
    if fmt == "png":
        opts["scale"] = 2
    return {"displaylogo": False, "displayModeBar": True, "toImageButtonOptions": opts,
            "modeBarButtonsToRemove": ["lasso2d", "select2d"]}


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120] or "figure"


def show_figure(fig: Any, *, key: str, name: str, data: pd.DataFrame | Callable[[], pd.DataFrame] | None = None,
                note: str | None = None) -> None:
    """A plotly figure, its long-input note, and HTML / CSV download buttons (generated on click)."""
    name = _safe_name(name)
    if note:
        st.caption(f":material/compress: {escape_md(note)}")
    config = plot_config(name)
    st.plotly_chart(fig, key=f"fig-{key}", config=config)
    row = st.container(horizontal=True, gap="small")

    def _html() -> str:
        return fig.to_html(include_plotlyjs=True, full_html=True, config=config)

    row.download_button("HTML", data=_html, file_name=f"{name}.html", mime="text/html", key=f"html-{key}",
                            on_click="ignore", icon=":material/download:")
    if data is not None:
        def _csv() -> str:
            df = data() if callable(data) else data
            return to_safe_csv(df)

        row.download_button("CSV", data=_csv, file_name=f"{name}.csv", mime="text/csv", key=f"csv-{key}",
                                on_click="ignore", icon=":material/table:")


_MD_SPECIALS = "\\`*_{}[]<>()#+-.!|~$:&="


def escape_md(s: object) -> str:
    """``str(s)`` made literal inside Streamlit markdown (st.markdown, st.caption, st.error, labels, ...).

    Every markdown special (``\\ ` * _ { } [ ] < > ( ) # + - . ! | ~ $ : & =``) is backslash-escaped,
    so ``![x](http://...)`` cannot become an image (an outside request), ``[t](url)`` a link,
    ``:material/x:`` an icon or ``$...$`` LaTeX; line breaks become spaces. The one helper for every
    string that comes from run data, the URL or an exception message. Do not put its result inside
    backticks (backslashes are literal in code spans). Bare URLs and e-mail addresses would still be
    auto-linked by GitHub-flavoured markdown (escapes do not stop that), so an invisible word joiner
    (U+2060) is put after ``://``, ``www`` and ``@``.
    """
    import re

    out = str(s).replace("\r", " ").replace("\n", " ")
    out = re.sub(r"(://|(?i:www)(?=\.)|@)", "\\1\u2060", out)
    return "".join("\\" + c if c in _MD_SPECIALS else c for c in out)


def views_safe(s: str) -> str:
    return _safe_name(s)
