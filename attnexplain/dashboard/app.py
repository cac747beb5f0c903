"""attnexplain dashboard: browse analysis runs (run folders, docs/run-format.md) and explain texts live.

Start it with ``attnexplain dashboard [RUNS_DIR]`` (or ``ATTNEXPLAIN_RUNS_DIR=runs streamlit run
app/streamlit_app.py`` from a source checkout). Pages live in ``attnexplain/dashboard/app_pages/``;
figure builders in :mod:`.figures`; run-folder reading, path safety and the run picker in
:mod:`.run_access`; figure display with downloads in :mod:`.widgets`; the example views of the
Explorer and Live pages in :mod:`.example_views`. :func:`main` draws the navigation; the Streamlit
scripts (``attnexplain/dashboard/streamlit_app.py``, the one ``attnexplain dashboard`` runs, and
the top-level ``app/streamlit_app.py``) only call it.

Exports: every figure's modebar camera button downloads it as PNG or SVG (choose in the sidebar:
it sets plotly.js's ``toImageButtonOptions.format``; plotly.js renders the image in the browser),
and each figure has HTML (interactive, self-contained, plotly.js embedded) and CSV (its data)
download buttons, generated only when clicked. Server-side export with kaleido was left out on
purpose: kaleido 1.x (the version on PyPI) drives a Chrome/Chromium installed on the server, which
a dashboard user should not need.

Long inputs: heatmaps above 256 tokens are mean-pooled over blocks of tokens, or sparsified to the
top-k keys of each row (sidebar choice), with a note under the figure.
"""

from __future__ import annotations

from pathlib import Path

_PAGES = Path(__file__).resolve().parent / "app_pages"


def page_path(name: str) -> Path:
    """The file of the page ``name`` (``"runs"``, ``"explorer"``, ...), for ``st.page_link`` / ``st.switch_page``."""
    return _PAGES / f"{name}.py"


def script_path() -> Path:
    """The Streamlit script of the dashboard inside the installed package (what ``attnexplain dashboard`` runs)."""
    return Path(__file__).resolve().parent / "streamlit_app.py"


def main() -> None:
    """Draw the dashboard: page navigation (absolute page paths, so any entry script works) and the sidebar."""
    import streamlit as st

    from attnexplain.dashboard import run_access
    from attnexplain.dashboard.widgets import escape_md

    # an emoji favicon is drawn from a data: URL; a ":material/...:" page icon would make the browser fetch
    # the favicon from fonts.gstatic.com (the dashboard loads nothing from outside hosts)
    st.set_page_config(page_title="attnexplain", page_icon="\N{LEFT-POINTING MAGNIFYING GLASS}", layout="wide")

    # the default page is served at "/" whatever its url_path (which only has to be unique), so the Runs
    # page is listed twice: at "/" (default) and, hidden from the menu, at "/runs"
    pages = [
        st.Page(page_path("runs"), title="Runs", icon=":material/folder_open:", url_path="home", default=True),
        st.Page(page_path("runs"), title="Runs", icon=":material/folder_open:", url_path="runs", visibility="hidden"),
        st.Page(page_path("explorer"), title="Example explorer", icon=":material/search:", url_path="explorer"),
        st.Page(page_path("ablations"), title="Ablations", icon=":material/content_cut:", url_path="ablations"),
        st.Page(page_path("compare"), title="Dense vs efficient", icon=":material/compare:", url_path="compare"),
        st.Page(page_path("queries"), title="Queries x individuals", icon=":material/groups:", url_path="queries"),
        st.Page(page_path("live"), title="Live", icon=":material/bolt:", url_path="live"),
    ]

    page = st.navigation(pages)

    with st.sidebar:
        st.caption(f"Runs folder: {escape_md(run_access.runs_dir())}")
        st.radio("Camera button saves", ["png", "svg"], key="ax_image_format", horizontal=True,
                 format_func=str.upper, help="Format of the modebar's camera button on every figure. "
                 "HTML and CSV downloads are under each figure.")
        st.radio("Inputs above 256 tokens", ["pool", "topk"], key="ax_long_mode", horizontal=True,
                 format_func=lambda m: {"pool": "mean-pool", "topk": "top-k keys"}[m],
                 help="Large heatmaps are mean-pooled over blocks of tokens, or keep only the top-k keys "
                 "of each query row; a note under the figure says which.")

    page.run()
