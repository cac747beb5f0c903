"""Streamlit script of the attnexplain dashboard (``attnexplain dashboard`` runs this file); see
:mod:`attnexplain.dashboard.app`."""

from attnexplain.dashboard.app import main

main()
