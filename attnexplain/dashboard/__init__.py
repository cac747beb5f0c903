"""The Streamlit dashboard: browse run folders (docs/run-format.md) and explain texts live.

It calls only the public API (``attnexplain.runs``, ``attnexplain.methods``, ...). Start it with
``attnexplain dashboard [RUNS_DIR]``; :func:`attnexplain.dashboard.app.script_path` is the script
that command runs. Modules: :mod:`.app` (navigation), ``app_pages/`` (one file per page),
:mod:`.run_access`, :mod:`.widgets`, :mod:`.example_views`, :mod:`.figures`. Importing this
package does not import streamlit.
"""
