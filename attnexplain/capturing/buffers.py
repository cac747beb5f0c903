"""Reusable CPU memory for captured attention matrices.

A full capture writes L x B x H x n x m new numbers per forward pass (MiniLM, 16 x 128 tokens:
72 MiB). Fresh memory from the C allocator is mapped page by page by the kernel on first touch
(glibc hands large blocks back to the system when they are freed): on a 2-core machine that page
faulting and zeroing cost about as much system time as a third of the forward pass itself
(measured: 56 ms of system time per capture against a ~450 ms forward, one thread). The pool
below keeps the storage of earlier matrices and hands it out again once nothing refers to it any
more (the capture result holding it was dropped, or a reduced capture cut the matrix down), so a
loop of captures writes into memory that is already mapped.

A buffer is reused only while the pool holds the sole reference to its storage (no tensor, view,
NumPy array or DLPack capsule made from it is alive), so a result the caller still holds is never
overwritten. Only tensors (and arrays made from them) count as references: a bare
``untyped_storage()`` object kept alone does not. A reused buffer may be larger than the matrix it
holds (the matrix is a view of its front), so ``torch.save`` of such a matrix writes the whole
buffer; save a ``.clone()`` to store only the matrix. The pool holds at most :data:`LIMIT_BYTES`;
beyond that, matrices get fresh memory as before. Matrices under :data:`MIN_BYTES` are not
pooled: the C allocator serves them from heap memory that is already mapped, and a generation's
hundreds of one-row matrices (one per layer and decoding step) would make every request scan a
long list (measured: +0.3 s CPU on SmolLM2 explaining 4 x 10 generated tokens, a fifth of the
call). CPU only (CUDA's caching allocator already reuses memory).
"""

from __future__ import annotations

import threading

import torch

__all__ = ["LIMIT_BYTES", "MIN_BYTES", "take_buffer", "release_buffers", "held_bytes"]

#: the most memory the pool keeps for reuse (bytes)
LIMIT_BYTES = 256 * 2**20
#: smaller requests are allocated as usual (glibc's default mmap threshold: smaller blocks come
#: from the already mapped heap, so they do not fault in fresh pages)
MIN_BYTES = 128 * 2**10

_use_count = getattr(torch._C, "_storage_Use_Count", None)
_lock = threading.Lock()
#: (buffer, the storage use count it has when only the pool refers to it)
_held: list[tuple[torch.Tensor, int]] = []


def _storage_uses(t: torch.Tensor) -> int:
    return int(_use_count(t.untyped_storage()._cdata))  # type: ignore[misc]


def take_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """An uninitialised contiguous tensor of ``shape`` / ``dtype`` on ``device``: the front of the
    smallest free pooled buffer that is large enough, else newly allocated and kept for reuse (the
    free buffers held longest are let go while the pool would hold more than :data:`LIMIT_BYTES`;
    past it, the new tensor is not kept). None where the pool does not apply (not CPU, or this
    torch build cannot tell whether a buffer is still referenced, or under :data:`MIN_BYTES`):
    allocate as usual then.

    The caller must overwrite every element (the contents are a previous capture's)."""
    if _use_count is None or torch.device(device).type != "cpu":
        return None
    shape = tuple(int(s) for s in shape)
    numel = 1
    for s in shape:
        numel *= s
    if numel * torch.empty((), dtype=dtype).element_size() < MIN_BYTES:
        return None
    with _lock:
        fits = [buf for buf, alone in _held
                if buf.dtype == dtype and buf.numel() >= numel and _storage_uses(buf) == alone]
        if fits:
            # a view: it counts as a use of the storage until the caller's last tensor from it is gone
            return min(fits, key=torch.Tensor.numel)[:numel].view(shape)
        new = torch.empty(numel, dtype=dtype, device=device)
        total = sum(b.nbytes for b, _ in _held) + new.nbytes
        keep = []
        for buf, alone in _held:  # oldest first
            if total > LIMIT_BYTES and _storage_uses(buf) == alone:
                total -= buf.nbytes
            else:
                keep.append((buf, alone))
        if total <= LIMIT_BYTES:
            keep.append((new, _storage_uses(new)))
        _held[:] = keep
        return new.view(shape)


def held_bytes() -> int:
    """Bytes the pool holds now (in use by live results or free for reuse)."""
    with _lock:
        return sum(b.nbytes for b, _ in _held)


def release_buffers() -> None:
    """Let go of every pooled buffer (memory still used by live results stays with them)."""
    with _lock:
        _held.clear()
