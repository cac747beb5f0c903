"""The one syntax for attention-backend specifications, and its parser.

A backend is given as ``"name"`` or ``"name:key=value,key=value"`` (the CLI's ``--backend NAME
--backend-option key=value`` gives the same pairs), ``(name, {options})``, a
:class:`BackendConfig` or an ``AttentionBackend``. Values are read by :func:`parse_option_value`
(JSON where possible: numbers, booleans, lists; ``none``/``null`` -> None; else the string).
SMYRF, LSH, local and Performer also take the pseudo-option ``memory=<share>``
(``"smyrf:memory=0.25"``, ``"local:memory=0.25"``): the size option (SMYRF's cluster sizes, LSH's
bucket size, the local window, Performer's feature count) is then chosen by :func:`resolve_memory`
for that share of the dense n x n scores at a reference length (SMYRF: :func:`smyrf_cluster_size`). An unknown
backend, an unknown option or a malformed string raises :class:`BackendSpecError` (a
``ValueError``) before anything runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import AttnExplainError
from .base import AttentionBackend

__all__ = [
    "BackendConfig", "BackendSpecError", "parse_backend", "parse_key_values", "parse_option_value",
    "smyrf_cluster_size", "smyrf_config_for_share", "resolve_memory",
]


#: backends that understand ``memory=<share>``, and the size options it sets
MEMORY_OPTIONS = {"smyrf": ("q_cluster_size", "k_cluster_size"), "lsh": ("bucket_size",), "local": ("window",),
                  "performer": ("n_features",)}


class BackendSpecError(AttnExplainError, ValueError):
    """A backend specification that cannot be built (unknown name or option, malformed string)."""


def parse_option_value(text: str) -> Any:
    """``"8"`` -> 8, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"none"`` -> None, ``"[1,2]"`` -> [1, 2], else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text.strip()


def parse_key_values(items: list[str] | str | None, *, what: str = "--backend-option", typed: bool = True,
                     error: type[Exception] = ValueError) -> dict[str, Any]:
    """``["n_hashes=4", "cluster_size=16"]`` (or one comma-separated string) -> dict.

    Values are read by :func:`parse_option_value` when ``typed`` (else kept as stripped strings).
    Raises ``error`` (default ValueError) naming ``what`` for an item without ``=`` or with an empty key.
    """
    if not items:
        return {}
    if isinstance(items, str):
        items = [items]
    out: dict[str, Any] = {}
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            key, eq, val = part.partition("=")
            if not eq or not key.strip():
                raise error(f"malformed {what} {part!r}: expected key=value, "
                            f"e.g. 'smyrf:n_hashes=2,q_cluster_size=64,k_cluster_size=64' or n_hashes=2")
            out[key.strip()] = parse_option_value(val) if typed else val.strip()
    return out


def _fmt_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class BackendConfig:
    """One backend configuration: registry ``name`` and constructor ``options``.

    ``label`` names the row in tables (default ``name(k=v, ...)``).
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        if not self.options:
            return self.name
        return f"{self.name}({', '.join(f'{k}={_fmt_value(v)}' for k, v in self.options.items())})"

    def build(self):
        """The backend object (``attnexplain.backends.get_backend(name, **options)``)."""
        from .base import get_backend

        return get_backend(self.name, **dict(self.options))


def _check_config(cfg: BackendConfig, original: Any) -> BackendConfig:
    """Build the backend once to validate name and options; clear errors otherwise."""
    from .base import BACKENDS, available_backends

    if cfg.name not in BACKENDS:
        raise BackendSpecError(
            f"unknown attention backend {cfg.name!r} in {original!r}; available: {', '.join(available_backends())}"
        )
    opts = dict(cfg.options)
    if "memory" in opts:
        if cfg.name not in MEMORY_OPTIONS:
            raise BackendSpecError(f"the option 'memory' (a target share of dense scores) is only understood for "
                                   f"{', '.join(MEMORY_OPTIONS)}, not {cfg.name!r} (in {original!r})")
        share = opts.pop("memory")
        if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 < share <= 1:
            raise BackendSpecError(f"memory must be a share in (0, 1], got {share!r} (in {original!r})")
        for k in MEMORY_OPTIONS[cfg.name]:
            if k in opts:
                raise BackendSpecError(f"give either memory= or {k}=, not both (in {original!r})")
    try:
        backend = BACKENDS[cfg.name](**opts)
    except TypeError as exc:
        cls = BACKENDS[cfg.name]
        import dataclasses

        known = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
        bad = sorted(set(opts) - set(known))
        hint = (f"unknown option(s) {', '.join(bad)}; " if bad else "") + (
            f"{cfg.name!r} takes: {', '.join(known + (['memory'] if cfg.name in MEMORY_OPTIONS else []))}"
            if known else f"{cfg.name!r} takes no options")
        raise BackendSpecError(f"cannot build backend {original!r}: {hint} ({exc})") from None
    except ValueError as exc:
        raise BackendSpecError(f"cannot build backend {original!r}: {exc}") from None
    del backend
    return cfg


def parse_backend(spec: Any) -> BackendConfig:
    """A :class:`BackendConfig` from ``"name"``, ``"name:k=v,k=v"``, ``(name, options)``,
    a :class:`BackendConfig` or an ``AttentionBackend`` instance; validated (raises
    :class:`BackendSpecError`)."""
    if isinstance(spec, BackendConfig):
        return _check_config(spec, spec.display)
    if isinstance(spec, AttentionBackend):
        return _check_config(BackendConfig(spec.name, dict(spec.options())), repr(spec))
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2 or not isinstance(spec[0], str) or not isinstance(spec[1], Mapping):
            raise BackendSpecError(f"a backend given as a tuple must be (name, {{options}}), got {spec!r}")
        return _check_config(BackendConfig(spec[0], dict(spec[1])), spec)
    if not isinstance(spec, str):
        raise BackendSpecError(f"cannot read a backend from {type(spec).__name__} {spec!r}; give 'name:key=value,...'")
    text = spec.strip()
    if not text:
        raise BackendSpecError("empty backend specification")
    name, _, rest = text.partition(":")
    options = parse_key_values(rest, what=f"backend option in {spec!r}", error=BackendSpecError)
    return _check_config(BackendConfig(name.strip(), options), spec)


# --------------------------------------------------------------------------------------------
# SMYRF cluster sizes for a memory budget
# --------------------------------------------------------------------------------------------


def _smyrf_share(n: int, cluster: int, n_hashes: int) -> float:
    from .base import get_backend

    return get_backend("smyrf", n_hashes=n_hashes, q_cluster_size=cluster, k_cluster_size=cluster).memory_fraction(n, n)


def smyrf_cluster_size(n: int, share: float, *, n_hashes: int = 2) -> int:
    """The SMYRF cluster size (queries = keys) whose share of dense scores at length ``n`` is
    closest to ``share``.

    SMYRF computes ``n_hashes * C * q_block * k_block`` of the ``n^2`` scores (C clusters of at
    most ``cluster`` tokens), i.e. about ``n_hashes * cluster / n``: so ``cluster ~= share * n /
    n_hashes`` (n = 256, 2 hashes: 64 for 50 %, 32 for 25 %; the paper's length-128 settings
    2 x 32 and 2 x 16). Every size 1..n is tried with the backend's own ``memory_fraction``
    and the closest is returned (ties: the smaller share). A budget that needs a cluster of
    ``>= n`` tokens gives one cluster, i.e. dense attention (share 1).
    """
    n, n_hashes = int(n), int(n_hashes)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if n_hashes < 1:
        raise ValueError(f"n_hashes must be >= 1, got {n_hashes}")
    best, best_key = n, None
    guess = max(1, round(share * n / n_hashes))
    for c in sorted(set(range(max(1, guess - 8), min(n, guess + 8) + 1)) | {n}):
        s = _smyrf_share(n, c, n_hashes)
        key = (abs(s - share), s)
        if best_key is None or key < best_key:
            best, best_key = c, key
    return best


def smyrf_config_for_share(n: int, share: float, *, n_hashes: int = 2, seed: int = 0,
                           label: str | None = None) -> BackendConfig:
    """A SMYRF :class:`BackendConfig` whose memory share at length ``n`` is closest to ``share``
    (see :func:`smyrf_cluster_size`); the label says the target and the achieved share."""
    c = smyrf_cluster_size(n, share, n_hashes=n_hashes)
    achieved = _smyrf_share(n, c, n_hashes)
    opts = {"n_hashes": n_hashes, "q_cluster_size": c, "k_cluster_size": c, "seed": seed}
    if label is None:
        label = f"smyrf {n_hashes}x{c} ({achieved:.0%} at n={n})"
    return BackendConfig("smyrf", opts, label)


def _closest_size(share_of, share: float, n: int) -> int:
    """The size 1..n whose ``share_of(size)`` (non-decreasing in size) is closest to ``share``
    (ties: the smaller share); bisection for the first size reaching ``share``, then its neighbour."""
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi) // 2
        if share_of(mid) >= share:
            hi = mid
        else:
            lo = mid + 1
    best = min({max(1, lo - 1), lo}, key=lambda c: (abs(share_of(c) - share), share_of(c)))
    return best


def resolve_memory(cfg: BackendConfig, n_ref: int, *, causal: bool = False) -> BackendConfig:
    """``cfg`` with a ``memory=<share>`` pseudo-option replaced by the size option that computes that
    share of the dense ``n_ref x n_ref`` scores (``backend.memory_fraction(n_ref, n_ref, causal)``),
    other configurations unchanged:

    * smyrf: cluster sizes (queries = keys), :func:`smyrf_cluster_size`;
    * lsh: ``bucket_size`` (its share ``n_hashes * C * chunk^2 / n^2``, about ``n_hashes * bucket / n``);
    * local: ``window`` (the band's pairs; ``causal``: the causal band ``i - window <= j <= i``);
    * performer: ``n_features`` R (the feature maps' ``2 n R`` entries stand in for ``n^2`` scores).

    The label says the target and the achieved share. Raises ValueError for ``n_ref < 1``.
    """
    if "memory" not in cfg.options:
        return cfg
    if int(n_ref) < 1:
        raise ValueError(f"n_ref must be >= 1, got {n_ref}")
    n_ref = int(n_ref)
    opts = dict(cfg.options)
    share = float(opts.pop("memory"))
    if cfg.name == "smyrf":
        n_hashes = int(opts.get("n_hashes", 2))
        c = smyrf_cluster_size(n_ref, share, n_hashes=n_hashes)
        opts.update(n_hashes=n_hashes, q_cluster_size=c, k_cluster_size=c)
        achieved = _smyrf_share(n_ref, c, n_hashes)
        size = f"{n_hashes}x{c}"
    else:
        from .base import get_backend

        key = MEMORY_OPTIONS[cfg.name][0]

        def share_of(size: int) -> float:
            return get_backend(cfg.name, **{**opts, key: size - (1 if cfg.name == "local" else 0)}) \
                .memory_fraction(n_ref, n_ref, causal)

        # local: window w = size - 1 >= 0 (w = 0: each token sees itself only)
        size_ = _closest_size(share_of, share, n_ref)
        achieved = share_of(size_)
        opts[key] = size_ - (1 if cfg.name == "local" else 0)
        size = f"{key}={opts[key]}"
    label = cfg.label or f"{cfg.name} {size} (target {share:.0%}: {achieved:.0%} at n={n_ref})"
    return BackendConfig(cfg.name, opts, label)
