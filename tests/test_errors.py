"""One error base: every exception class of the package derives from AttnExplainError (keeping its
older built-in base), and the command line turns any of them into one ``error: ...`` line, exit 2."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from typer.testing import CliRunner

import attnexplain
from attnexplain.errors import AttnExplainError, UnknownNameError


def _package_exception_classes() -> list[type[BaseException]]:
    found = []
    for mod in pkgutil.walk_packages(attnexplain.__path__, "attnexplain."):
        if mod.name.startswith("attnexplain.dashboard"):  # Streamlit scripts: they hold no exception class
            continue
        module = importlib.import_module(mod.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


def test_every_package_exception_has_the_common_base():
    classes = _package_exception_classes()
    names = {c.__name__ for c in classes}
    # the classes the CLI used to list one by one, and the rest
    assert {"DatasetError", "ModelNotFoundError", "InputError", "AnalyzeError", "BackendSpecError", "RunFormatError",
            "RunMismatchError", "RunLockedError", "RunPathError", "UnsupportedArchitectureError",
            "NothingCapturedError"} <= names
    missing = [c.__qualname__ for c in classes if not issubclass(c, AttnExplainError)]
    assert not missing, f"exception classes without AttnExplainError: {missing}"


def test_old_bases_are_kept():
    from attnexplain.data import DatasetError
    from attnexplain.models import ModelNotFoundError
    from attnexplain.runs import RunLockedError, RunPathError

    assert issubclass(DatasetError, ValueError) and issubclass(RunPathError, ValueError)
    assert issubclass(ModelNotFoundError, FileNotFoundError) and issubclass(RunLockedError, RuntimeError)
    err = UnknownNameError("unknown thing 'x'; available: a, b")
    assert isinstance(err, KeyError) and str(err) == "unknown thing 'x'; available: a, b"


@pytest.mark.parametrize("exc", [AttnExplainError("plain base"), UnknownNameError("a KeyError too")])
def test_cli_prints_one_error_line_for_any_package_error(monkeypatch, tmp_path, exc):
    from attnexplain.cli import args as cli_args
    from attnexplain.cli.main import app

    def boom(self):
        raise exc

    monkeypatch.setattr(cli_args.ReportArgs, "run_report", boom)
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2
    assert res.stderr == f"error: {exc.args[0]}\n"


def test_cli_does_not_hide_other_errors(monkeypatch, tmp_path):
    from attnexplain.cli import args as cli_args
    from attnexplain.cli.main import app

    def boom(self):
        raise ZeroDivisionError("a bug, not a user error")

    monkeypatch.setattr(cli_args.ReportArgs, "run_report", boom)
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code != 2 and isinstance(res.exception, ZeroDivisionError)
