"""Thin entry point of the attnexplain dashboard for ``streamlit run app/streamlit_app.py`` in a
source checkout. The dashboard itself lives in the package (:mod:`attnexplain.dashboard`), so
``attnexplain dashboard`` works from an installed wheel in any folder."""

from attnexplain.dashboard.app import main

main()
