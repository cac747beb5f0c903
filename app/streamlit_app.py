"""attnexplain dashboard: browse analysis runs (run folders, docs/run-format.md) and explain texts live.

Start it with ``attnexplain dashboard [RUNS_DIR]`` (or ``ATTNEXPLAIN_RUNS_DIR=runs streamlit run
app/streamlit_app.py``). Pages live in ``app/app_pages/``; figure builders in ``app/views.py``;
shared helpers (cached run reading, path safety, downloads) in ``app/ui_common.py``.

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

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import streamlit as st  # noqa: E402

import ui_common  # noqa: E402

st.set_page_config(page_title="attnexplain", page_icon=":material/visibility:", layout="wide")

PAGES = [
    st.Page("app_pages/runs.py", title="Runs", icon=":material/folder_open:", url_path="runs", default=True),
    st.Page("app_pages/explorer.py", title="Example explorer", icon=":material/search:", url_path="explorer"),
    st.Page("app_pages/ablations.py", title="Ablations", icon=":material/content_cut:", url_path="ablations"),
    st.Page("app_pages/compare.py", title="Dense vs efficient", icon=":material/compare:", url_path="compare"),
    st.Page("app_pages/live.py", title="Live", icon=":material/bolt:", url_path="live"),
]

page = st.navigation(PAGES)

with st.sidebar:
    st.caption(f"Runs folder: `{ui_common.runs_dir()}`")
    st.radio("Camera button saves", ["png", "svg"], key="ax_image_format", horizontal=True,
             format_func=str.upper, help="Format of the modebar's camera button on every figure. "
             "HTML and CSV downloads are under each figure.")
    st.radio("Inputs above 256 tokens", ["pool", "topk"], key="ax_long_mode", horizontal=True,
             format_func=lambda m: {"pool": "mean-pool", "topk": "top-k keys"}[m],
             help="Large heatmaps are mean-pooled over blocks of tokens, or keep only the top-k keys "
             "of each query row; a note under the figure says which.")

page.run()
