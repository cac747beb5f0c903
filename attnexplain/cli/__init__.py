"""The ``attnexplain`` command line: :data:`attnexplain.cli.main.app` (typer), argument
dataclasses in :mod:`attnexplain.cli.args`."""
