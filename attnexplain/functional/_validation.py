"""Argument checks and dtype rules shared by the functional modules (effective attention, the
distribution variant, norms, rollout, readouts): shapes named in errors, finite values, key masks
``(..., m)`` with True = real key, rank tolerances that follow the dtype a tensor was computed in."""

from __future__ import annotations

import math

import torch

_FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------
# validation helpers (shared by the other functional modules)
# --------------------------------------------------------------------------------------------


def _check_tensor(x, name: str, min_ndim: int, layout: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.dtype not in _FLOAT_TYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {x.dtype}; "
            f"convert it with {name}.float()"
        )
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have shape {layout} (at least {min_ndim} dims), got shape {tuple(x.shape)}")
    return x


def _check_finite(x: torch.Tensor, name: str, hint: str = "") -> None:
    # a sum is finite iff no entry is NaN/inf, unless it overflows: then check entry-wise
    if x.numel() == 0 or bool(torch.isfinite(x.sum())):
        return
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        parts = [f"{name} contains {bad} non-finite value(s) (NaN or inf).", hint,
                 "Remove them, or pass key_mask so that padded positions are ignored."]
        raise ValueError(" ".join(p for p in parts if p))


def _check_key_mask(key_mask, m: int, name: str = "key_mask") -> torch.Tensor | None:
    """Validate a key mask (..., m) bool, True = real key."""
    if key_mask is None:
        return None
    if not isinstance(key_mask, torch.Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor (..., m) with True = real key, got {type(key_mask).__name__}")
    if key_mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must be a bool tensor (True = real key), got {key_mask.dtype}; "
            f"for a Hugging Face attention_mask pass attention_mask.bool()"
        )
    if key_mask.ndim < 1 or key_mask.shape[-1] != m:
        raise ValueError(f"{name} must have shape (..., m) with m = {m} keys, got shape {tuple(key_mask.shape)}")
    return key_mask


def _broadcast(shapes: dict[str, tuple[int, ...]], what: str) -> tuple[int, ...]:
    try:
        return tuple(torch.broadcast_shapes(*shapes.values()))
    except RuntimeError:
        desc = ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
        raise ValueError(
            f"leading (batch) dimensions do not broadcast: {desc}. They are aligned from the right "
            f"({what}); e.g. for attention (B, H, n, m) pass a key mask of shape (B, 1, m), "
            f"i.e. key_mask[:, None, :]"
        ) from None


def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def _default_rtol(m: int, d: int, dtype: torch.dtype, rtol: float | None) -> float:
    if rtol is not None:
        rtol = float(rtol)
        if not (0.0 <= rtol < 1.0) or math.isnan(rtol):
            raise ValueError(f"rtol must be in [0, 1), got {rtol}")
        return rtol
    tol = max(m, d) * _eps(dtype)
    if tol >= 1.0:
        raise ValueError(
            f"the default rank tolerance max(m, d) * eps({dtype}) = {tol:.3g} is >= 1 and would discard "
            f"every direction of T; compute T in float32, or pass rtol explicitly (e.g. rtol=1e-2)"
        )
    return tol


def _mask_rows(x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the rows (dim -2) of x at masked keys (also clears NaN/inf there)."""
    if key_mask is None:
        return x
    return torch.where(key_mask[..., :, None], x, torch.zeros((), dtype=x.dtype, device=x.device))


def _mask_cols(x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the columns (dim -1) of x at masked keys (also clears NaN/inf there)."""
    if key_mask is None:
        return x
    return torch.where(key_mask[..., None, :], x, torch.zeros((), dtype=x.dtype, device=x.device))


def _check_attention(A, name: str = "A") -> torch.Tensor:
    return _check_tensor(A, name, 2, "(..., n, m)")


def _check_stochastic(A: torch.Tensor, key_mask: torch.Tensor | None, atol: float) -> None:
    sums = A.sum(-1, dtype=torch.float64) if A.dtype != torch.float64 else A.sum(-1)
    if key_mask is not None:
        # a query row whose keys are all masked has nothing to be stochastic over
        any_real = key_mask.any(-1, keepdim=True)
        sums = torch.where(any_real, sums, torch.ones((), dtype=sums.dtype, device=sums.device))
    dev = (sums - 1).abs()
    if bool((dev > atol).any()):
        worst = float(dev.max())
        raise ValueError(
            f"check_stochastic: rows of A (over unmasked keys) must sum to 1 within {atol:g}, but a row is "
            f"off by {worst:.3g}. Pass attention probabilities (after softmax), the right key_mask, or "
            f"check_stochastic=False to project arbitrary rows"
        )


def _stochastic_atol(check, dtype: torch.dtype) -> float | None:
    if check is False or check is None:
        return None
    if check is True:
        return 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
    return float(check)


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any input is float64, else float32 (half inputs are projected in float32)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _out_dtype(*dtypes: torch.dtype) -> torch.dtype:
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out
