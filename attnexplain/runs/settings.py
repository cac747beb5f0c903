"""What an ``analyze`` request asks for, checked: the default methods and ERASER bins, method
names, ``--shard i/n``, the mapping of data-set labels to model labels, and the versions recorded
in a run's manifest."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Mapping, Sequence

from ..errors import AttnExplainError
from ..metrics import ERASER_BINS
from .atomic_io import _log_stderr


#: the methods ``analyze`` runs by default (integrated gradients is left out: it is ~20x slower;
#: ``methods=["all"]`` runs every registered method)
DEFAULT_METHODS = ("raw_attention", "effective_attention", "norm", "rollout", "gradient_x_input", "random")
#: ERASER's bins (fractions of the content tokens): :data:`attnexplain.metrics.ERASER_BINS`
DEFAULT_BINS = ERASER_BINS
#: methods left out of ``"all"`` because they are far too slow for data sets
SLOW_METHODS = ("flow", "attention_distribution")

#: where ``analyze`` runs the batches: this process, or an actor pool on a Ray cluster
ENGINES = ("local", "ray")

class AnalyzeError(AttnExplainError, ValueError):
    """A user error in an analyze request (bad option, labels that do not match the model...)."""


def resolve_methods(methods: Sequence[str] | str | None) -> list[str]:
    """Method names to run: None -> :data:`DEFAULT_METHODS` (those registered), ``"all"`` -> all
    registered methods (slow ones included only when named), else checked against the registry."""
    from ..methods import available_methods

    known = available_methods()
    if methods is None or (isinstance(methods, str) and methods == "default"):
        chosen = [m for m in DEFAULT_METHODS if m in known]
        missing = [m for m in DEFAULT_METHODS if m not in known]
        if missing:
            _log_stderr(f"[analyze] default method(s) not available in this installation, skipped: {', '.join(missing)}")
        if not chosen:
            raise AnalyzeError(f"none of the default methods is registered; available: {', '.join(known)}")
        return chosen
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    flat: list[str] = []
    for m in methods:
        flat += [x.strip() for x in str(m).split(",") if x.strip()]
    if "all" in flat:
        return [m for m in known if m not in SLOW_METHODS] + [m for m in flat if m in SLOW_METHODS]
    if "default" in flat:
        flat = [m for m in DEFAULT_METHODS if m in known] + [m for m in flat if m != "default"]
    unknown = [m for m in flat if m not in known]
    if unknown:
        raise AnalyzeError(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(known)} (or 'all')")
    if not flat:
        raise AnalyzeError("no methods given")
    return list(dict.fromkeys(flat))


def applicable_methods(lm, method_names: Sequence[str], requested: Sequence[str] | str | None, *,
                       log=None) -> tuple[list[str], dict[str, str]]:
    """``method_names`` (from :func:`resolve_methods`) checked against the model's architecture
    (each method's ``check_model``, no forward pass).

    A method that refuses the model is left out, with one line through ``log`` (stderr by
    default), when only ``"all"`` brought it in (e.g. the post-LN decompositions ``alti``,
    ``globenc``, ``norm_residual_ln`` on GPT-2 / Llama); a method named explicitly raises
    :class:`AnalyzeError` with the reason (the CLI: exit 2).

    Returns ``(kept names, {left-out name: reason})``."""
    from ..capturing import UnsupportedArchitectureError
    from ..methods import get_method

    if isinstance(requested, str):
        requested = [requested]
    flat = [x.strip() for m in (requested or []) for x in str(m).split(",") if x.strip()]
    from_all = "all" in flat
    kept: list[str] = []
    left_out: dict[str, str] = {}
    for name in method_names:
        try:
            get_method(name).check_model(lm)
        except UnsupportedArchitectureError as exc:
            if from_all and name not in flat:
                left_out[name] = str(exc)
                continue
            raise AnalyzeError(f"method {name!r} cannot explain {getattr(lm, 'name', 'this model')}: {exc}") from None
        kept.append(name)
    if left_out:
        (log or _log_stderr)(f"[analyze] 'all' left out {len(left_out)} method(s) that do not apply to "
                             f"{getattr(lm, 'name', 'this model')}: "
                             + "; ".join(f"{k} ({v.split(';')[0].split(' (')[0]})" for k, v in left_out.items()))
    if not kept:
        raise AnalyzeError(f"none of the methods {', '.join(method_names)} applies to {getattr(lm, 'name', 'this model')}")
    return kept, left_out


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"i/n"`` (0-based ``i``) -> ``(i, n)``."""
    if shard is None or shard == "":
        return None
    if isinstance(shard, tuple):
        i, n = shard
    else:
        try:
            a, b = str(shard).split("/")
            i, n = int(a), int(b)
        except ValueError:
            raise AnalyzeError(f"--shard must look like i/n (e.g. 0/4), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise AnalyzeError(f"--shard {i}/{n}: need n >= 1 and 0 <= i < n (shards are numbered from 0)")
    return int(i), int(n)


def resolve_label_map(dataset_labels: list[str] | None, model_labels: list[str] | None,
                      label_map: Mapping[str, str] | None = None, *, dataset_name: str = "dataset",
                      model_name: str = "model", max_label: int | None = None) -> list[int] | None:
    """Map dataset class indices to model class indices (``mapping[ds_index] = model_index``).

    * an explicit ``label_map`` (dataset label name -> model label name or index) wins;
    * same names (case-insensitive; the dataset's may be a subset) map by name;
    * a model with generic names (``LABEL_0``...) or integer dataset labels map by index, when
      the model has enough classes;
    * otherwise :class:`AnalyzeError` naming both label sets and the ``--label-map`` escape hatch.

    Returns None for unlabelled data.
    """
    if model_labels is None:
        raise AnalyzeError(f"{model_name} is not a classifier (no class labels); analyze needs a sequence classifier")
    n_model = len(model_labels)
    low_model = [m.lower() for m in model_labels]
    if label_map:
        if dataset_labels is None:
            raise AnalyzeError("--label-map given but the dataset's labels have no names (integer labels)")
        contradictions = []
        for name in dataset_labels:
            target = label_map.get(name, label_map.get(name.lower()))
            if target is None or name.lower() not in low_model:
                continue
            t = str(target)
            idx = low_model.index(t.lower()) if t.lower() in low_model else (int(t) if t.isdigit() else None)
            if idx is not None and idx != low_model.index(name.lower()):
                contradictions.append(f"{name}={target}")
        if contradictions:
            raise AnalyzeError(
                f"--label-map {', '.join(contradictions)} contradicts {model_name}'s own labels: the model has a class "
                f"named the same as the data set's label (its id2label: {model_labels}). Labels with the same name "
                f"are matched by name; leave them out of --label-map")
        out = []
        for name in dataset_labels:
            target = label_map.get(name, label_map.get(name.lower()))
            if target is None:
                raise AnalyzeError(f"--label-map does not say where dataset label {name!r} goes; "
                                   f"dataset labels: {dataset_labels}, model labels: {model_labels}")
            t = str(target)
            if t.lower() in low_model:
                out.append(low_model.index(t.lower()))
            elif t.isdigit() and int(t) < n_model:
                out.append(int(t))
            else:
                raise AnalyzeError(f"--label-map maps {name!r} to {target!r}, which is not a model label "
                                   f"({model_labels}) or index < {n_model}")
        return out
    if dataset_labels is None:
        if max_label is not None and max_label >= n_model:
            raise AnalyzeError(f"the dataset has integer label {max_label} but {model_name} has only {n_model} "
                               f"classes ({model_labels})")
        return None if max_label is None else list(range(max_label + 1))
    low_ds = [d.lower() for d in dataset_labels]
    if all(d in low_model for d in low_ds):
        return [low_model.index(d) for d in low_ds]
    generic = all(m.upper() == f"LABEL_{i}" for i, m in enumerate(model_labels))
    if generic and len(dataset_labels) <= n_model:
        return list(range(len(dataset_labels)))
    # no pairing is suggested: the order of the names says nothing about which class is which
    example = ",".join(f"{d}=<{'|'.join(model_labels)}>" for d in dataset_labels)
    raise AnalyzeError(
        f"the labels of {dataset_name} ({', '.join(dataset_labels)}) do not match the labels of {model_name} "
        f"({', '.join(model_labels)}). Pass --label-map to say which data set label is which model label: "
        f"--label-map {example}"
    )


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("attnexplain", "torch", "transformers", "numpy", "pandas", "pyarrow", "scipy", "captum"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
