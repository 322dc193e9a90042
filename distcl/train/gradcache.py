"""Gradient caching: contrastive batches beyond activation memory, with exact gradients.

Gao, Zhang, Han & Callan 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup" (arXiv:2101.06983). A contrastive loss couples every sample with every other, so plain
gradient accumulation over micro-batches changes the loss (fewer negatives). Gradient caching
keeps the full-batch loss and splits only the encoder's work:

1. Pass 1, no autograd: embed every chunk, keep only the embeddings (``B x D`` per view).
2. Loss on all embeddings (leaf copies that require grad); its backward gives
   ``dL/dz`` (``B x D``) and fills the loss's own parameters' gradients (e.g. a learnable
   temperature/bias). Negatives are gathered across ranks inside the loss as usual.
3. Pass 2, with autograd: re-embed each chunk and ``backward(z_chunk, dL/dz_chunk)``. By the
   chain rule the encoder's accumulated gradients equal those of the full-batch backward.

Peak activation memory is that of one chunk, plus ``B x D`` embeddings and the loss's
``B_local x B_global`` logits. The price is a second forward (about 1.3x the compute).

Caveats, and the choices made:

- Randomness (dropout, stochastic depth): the RNG state (CPU, and every CUDA device when CUDA is
  initialised) is recorded before each chunk in pass 1 and restored before the same chunk in pass
  2, so both passes draw the same masks. Afterwards the RNG is left where one pass 1 plus the loss
  left it, as if the forward had run once.
- BatchNorm in train mode normalises each chunk with that chunk's statistics, which differ from
  full-batch statistics. The gradient is exact for that per-chunk-BN model (the same thing as
  per-device BN with ``chunk_size`` samples per device), and pass 1 and pass 2 see identical chunks
  in the same mode, so their embeddings agree. Running statistics would be updated twice per chunk;
  we snapshot every BatchNorm's ``running_mean``/``running_var``/``num_batches_tracked`` before pass 1
  and restore them after it, so only pass 2 updates them: once per chunk, exactly as a plain
  per-chunk forward would. Other side effects in ``encode`` (queues, EMA updates) are not undone:
  keep them out of ``encode``.
- DDP: pass ``encode=ddp_model`` (a ``DistributedDataParallel`` whose forward returns
  embeddings). Its ``no_sync`` is used for every pass-2 chunk but the last, so gradients
  accumulate locally and are all-reduced (averaged) once, in the last chunk's backward; this is
  DDP's documented accumulation pattern (tested at world size 2: one all-reduce per bucket per
  step, gradients equal to the single-process global batch). Any other callable can pass
  ``no_sync=`` explicitly; a non-DDP ``encode`` under a process group gets no all-reduce here, as
  with a plain backward. The loss's own parameters are NOT inside DDP: the training loop averages
  their gradients exactly as it does without gradient caching.
- Precision: put autocast inside ``encode``. Half/bf16 embeddings are cast to float32 for the
  loss, and the cached gradient is cast back to the embedding dtype for pass 2.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from distcl.runtime.precision import fp32_embeddings

Encode = Callable[[Tensor], Tensor]
LossFn = Callable[[list[Tensor], Tensor | None], Tensor]


def _rng_state() -> tuple[Tensor, list[Tensor] | None]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, list[Tensor] | None]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _bn_snapshot(module: nn.Module | None) -> list[tuple[Tensor, Tensor]]:
    """(live buffer, saved copy) for every BatchNorm running statistic in ``module``."""
    if module is None:
        return []
    pairs = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked):
                if buf is not None:
                    pairs.append((buf, buf.detach().clone()))
    return pairs


def gradcache_step(
    encode: Encode,
    loss_fn: LossFn,
    views: Sequence[Tensor],
    labels: Tensor | None,
    chunk_size: int,
    *,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    bn_module: nn.Module | None = None,
) -> Tensor:
    """Backward of ``loss_fn([encode(v) for v in views], labels)`` in chunks; returns the loss.

    Call it instead of ``loss.backward()``; then ``optimizer.step()`` as usual. Gradients are
    accumulated into ``.grad`` exactly as the plain backward would (zero them before, as usual).

    Args:
        encode: maps a chunk ``c x ...`` (e.g. ``c x C x H x W``) to embeddings ``c x D``. Called
            twice per chunk (no-grad, then with grad). A ``DistributedDataParallel`` model is
            detected and its ``no_sync`` used, see the module docstring.
        loss_fn: ``(list of V tensors, each B_local x D; labels B_local or None) -> scalar``, e.g.
            a module from ``distcl.losses.build_loss``. Runs once, on all embeddings, in fp32.
        views: V tensors of ``B_local x ...`` (same B_local for every view).
        labels: ``B_local`` class labels for label losses (SupCon), else None.
        chunk_size: samples per encoder chunk, > 0; the last chunk may be smaller (a run's
            train.global_batch splits into whole chunks: distcl/config/rules.py).
        no_sync: context-manager factory wrapping every pass-2 chunk but the last. Default: the
            ``no_sync`` method of ``encode`` when it has one (DDP), else none.
        bn_module: module whose BatchNorm running stats are restored after pass 1. Default:
            ``encode`` when it is an ``nn.Module``.

    Returns:
        The loss, detached (scalar).
    """
    if chunk_size <= 0:
        raise ValueError(f"gradcache chunk_size must be > 0, got {chunk_size} (try 256)")
    if len(views) == 0:
        raise ValueError("gradcache_step needs at least one view, got an empty list")
    if no_sync is None and callable(getattr(encode, "no_sync", None)):
        no_sync = encode.no_sync  # type: ignore[union-attr]
    if bn_module is None and isinstance(encode, nn.Module):
        bn_module = encode

    chunks = [list(v.split(chunk_size)) for v in views]  # V lists of c x ...
    cached, rng_states, dtypes = _embed_without_grad(encode, chunks, bn_module)

    # Loss on all embeddings; gathers across ranks happen inside loss_fn.
    reps = [z.detach().requires_grad_() for z in cached]  # V x (B_local x D) leaves
    loss = loss_fn(reps, labels)
    if loss.ndim != 0:
        raise ValueError(f"gradcache loss_fn must return a scalar, got shape {tuple(loss.shape)}")
    loss.backward()  # fills rep.grad = dL/dz and the loss's own parameter grads
    rng_after = _rng_state()

    grads = [
        (r.grad if r.grad is not None else torch.zeros_like(r)).split(chunk_size) for r in reps
    ]
    _backward_through_chunks(encode, chunks, grads, rng_states, dtypes, no_sync)
    _set_rng_state(rng_after)
    return loss.detach()


def _embed_without_grad(encode: Encode, chunks: list[list[Tensor]], bn_module: nn.Module | None):
    """Pass 1: the embeddings only, no activations kept. Returns (V tensors `B_local x D` in
    fp32, the RNG state before each chunk, each chunk's embedding dtype), chunks in order; the
    BatchNorm running statistics of `bn_module` are left as they were."""
    rng_states, cached, dtypes = [], [], []
    bn_saved = _bn_snapshot(bn_module)
    with torch.no_grad():
        for view_chunks in chunks:
            zs = []
            for x in view_chunks:
                rng_states.append(_rng_state())
                z = encode(x)  # c x D
                dtypes.append(z.dtype)
                zs.append(fp32_embeddings(z))
            cached.append(torch.cat(zs))  # B_local x D
    for live, saved in bn_saved:
        live.copy_(saved)
    return cached, rng_states, dtypes


def _backward_through_chunks(
    encode: Encode,
    chunks: list[list[Tensor]],
    grads: list[tuple[Tensor, ...]],
    rng_states: list,
    dtypes: list[torch.dtype],
    no_sync: Callable[[], contextlib.AbstractContextManager] | None,
) -> None:
    """Pass 2: re-embed each chunk with autograd, replaying its RNG, and push `dL/dz` through;
    every chunk but the last under `no_sync`, so DDP all-reduces once, in the last backward."""
    jobs = [(v, i) for v in range(len(chunks)) for i in range(len(chunks[v]))]
    for k, (v, i) in enumerate(jobs):
        _set_rng_state(rng_states[k])
        last = k == len(jobs) - 1
        ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        with ctx:
            z = encode(chunks[v][i])  # c x D
            torch.autograd.backward(z, grads[v][i].to(dtypes[k]))
