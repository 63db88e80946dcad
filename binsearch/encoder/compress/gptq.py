"""GPTQ for residual-binarized weights: each Linear quantized column by column, errors fed forward.

The input Hessian ``H = X^T X`` of each Linear (from calibration text) weighs each
column's rounding error; after a column is set, the rest absorb its error through
``H^-1`` (Frantar et al. 2022), here with the plane patterns of residual
binarization instead of a uniform grid. Layers go in order, each on the outputs
of the already-quantized layers before it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from binsearch.codes.quantize import binarize_weight, sign_patterns
from binsearch.encoder.compress.format import (
    QuantizedTensor,
    apply_weights,
    transformer_of,
)


def gptq_binarize(
    w: np.ndarray,
    hessian: np.ndarray,
    planes: int,
    rounds: int = 2,
    damp: float = 0.01,
    act_order: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``w`` to ``planes`` residual sign planes minimising ``tr(E H E^T)``.

    Args:
        w: float32 ``(rows, cols)``, a Linear weight (rows = outputs).
        hessian: float ``(cols, cols)``, ``X^T X`` of the layer's inputs.
        planes: bits ``K``; each row can take the ``2^K`` values ``sum_k a_k s_k``.
        rounds: alternations of (GPTQ signs, Hessian-weighted scale refit).
        damp: ridge added to H, relative to its mean diagonal.
        act_order: quantize the columns in order of decreasing ``H`` diagonal (the
            inputs with the most energy first, while the most columns are left to
            absorb their error; "act-order" of the GPTQ reference code) instead of
            left to right. The per-row scales do not depend on the order, so it
            costs nothing stored.

    Returns:
        int8 ±1 signs ``(K, rows, cols)`` and float32 scales ``(K, rows, 1)``,
        the best round by ``tr(E H E^T)`` (the first starts from the
        weight-only fit, so it is never worse than that by this measure).
    """
    import torch

    W = torch.from_numpy(np.asarray(w, dtype=np.float32)).double()
    H = torch.from_numpy(np.asarray(hessian)).double().clone()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H += damp * torch.diag(H).mean() * torch.eye(cols, dtype=H.dtype)
    signs0, scales0 = binarize_weight(w, planes, iters=10)
    perm = torch.arange(cols)
    if act_order:  # every step below is the same problem with the columns permuted
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
        signs0 = signs0[:, :, perm.numpy()]
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    patterns = torch.from_numpy(sign_patterns(planes)).double()  # (2^K, K)

    def error(signs: torch.Tensor, alpha: torch.Tensor) -> float:
        e = W - torch.einsum("prc,rp->rc", signs, alpha)
        return float(((e @ H) * e).sum())

    def gptq(alpha: torch.Tensor) -> torch.Tensor:
        grid = alpha @ patterns.T  # (rows, 2^K)
        Wq = W.clone()
        index = torch.empty(rows, cols, dtype=torch.long)
        for c0 in range(0, cols, 128):
            c1 = min(c0 + 128, cols)
            block, err = Wq[:, c0:c1].clone(), torch.zeros(rows, c1 - c0, dtype=W.dtype)
            Ub = U[c0:c1, c0:c1]
            for j in range(c1 - c0):
                col = block[:, j]
                idx = (col[:, None] - grid).abs().argmin(1)
                index[:, c0 + j] = idx
                q = grid.gather(1, idx[:, None])[:, 0]
                e = (col - q) / Ub[j, j]
                block[:, j:] -= e[:, None] * Ub[j, j:][None, :]
                err[:, j] = e
            Wq[:, c1:] -= err @ U[c0:c1, c1:]
        return patterns[index].permute(2, 0, 1)  # (K, rows, cols)

    def refit(signs: torch.Tensor) -> torch.Tensor:
        s = signs.permute(1, 2, 0)  # (rows, cols, K)
        hs = torch.matmul(H, s)  # (rows, cols, K)
        gram = s.transpose(1, 2) @ hs + 1e-9 * torch.eye(planes, dtype=H.dtype)
        rhs = (hs * W[:, :, None]).sum(1)  # (rows, K)
        return torch.linalg.solve(gram, rhs[..., None])[..., 0]  # (rows, K)

    alpha = torch.from_numpy(scales0[..., 0].T.astype(np.float64)).contiguous()
    best_signs = torch.from_numpy(signs0).double()
    best_alpha, best_err = alpha, error(best_signs, alpha)
    for _ in range(rounds):
        signs = gptq(alpha)
        alpha = refit(signs)
        err = error(signs, alpha)
        if err < best_err:
            best_signs, best_alpha, best_err = signs, alpha, err
    signs = torch.empty_like(best_signs)
    signs[:, :, perm] = best_signs  # back to the weight's own column order
    return signs.to(torch.int8).numpy(), best_alpha.T[..., None].float().numpy()


class _Stop(Exception):
    """Raised by a hook to end a forward pass once a layer's inputs are collected."""


def layer_groups(names: Sequence[str]) -> list[list[str]]:
    """Linear weight names grouped by transformer layer (``...layer.<i>.``), in order."""
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        cut = next((i + 2 for i, p in enumerate(parts[:-1]) if p in ("layer", "layers", "h")), None)
        groups.setdefault(".".join(parts[:cut]) if cut else name, []).append(name)
    return list(groups.values())


def gptq_model(
    model: Any,
    texts: Sequence[str],
    plan: Mapping[str, int],
    max_seq_length: int = 128,
    progress: bool = True,
    deadline: float | None = None,
    done: list[str] | None = None,
    act_order: bool = True,
) -> dict[str, QuantizedTensor]:
    """GPTQ every Linear weight in ``plan`` (name -> planes), layer by layer, in place.

    For each layer the calibration ``texts`` are run through the model (whose
    earlier layers are already quantized) up to that layer, accumulating each
    Linear's input Hessian ``X^T X`` over real (non-padding) tokens; then the
    layer's weights are quantized by :func:`gptq_binarize` and written back.
    A layer that would end after ``deadline`` (judged by the slowest layer so
    far) and all after it get the weight-only fit instead; ``done``, when
    given, receives the names that had GPTQ. ``act_order``: as for
    :func:`gptq_binarize`.
    """
    import time

    import torch

    auto = transformer_of(model)
    modules = dict(auto.named_modules())
    groups = layer_groups([n for n in plan if isinstance(modules.get(n[:-7]), torch.nn.Linear)])
    old_len = model.max_seq_length
    model.max_seq_length = min(max_seq_length, old_len)
    batches = [model.tokenize(list(texts[i : i + 32])) for i in range(0, len(texts), 32)]
    model.max_seq_length = old_len
    out: dict[str, QuantizedTensor] = {}
    out_names = done if done is not None else []
    bar = tqdm(groups, desc="GPTQ", unit="layer", disable=not progress)
    slowest = 0.0
    for group in bar:
        mods = {n: modules[n[:-7]] for n in group}
        mark = time.monotonic()
        late = deadline is not None and mark + slowest > deadline
        hess = None if late else input_hessians(auto, batches, mods)
        for name in group:
            w = mods[name].weight.detach().numpy()
            if hess is None:
                signs, scales = binarize_weight(w, int(plan[name]), iters=10)
            else:
                signs, scales = gptq_binarize(
                    w, hess[name].numpy(), int(plan[name]), act_order=act_order
                )
            out[name] = QuantizedTensor.from_signs(signs, scales)
            apply_weights(auto, {name: out[name].dequantize()})
        if not late:
            slowest = max(slowest, time.monotonic() - mark)
            out_names.extend(group)
    bar.close()
    return out


_AUTO_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def input_hessians(
    auto: Any, batches: Sequence[Mapping[str, Any]], mods: Mapping[str, Any]
) -> dict:
    """``X^T X`` (float64 ``(in, in)``) of each Linear in ``mods`` over the real tokens
    of ``batches``; each forward pass stops once all of them have seen their input."""
    import torch

    hess = {
        n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in mods.items()
    }
    state: dict[str, Any] = {"mask": None, "seen": set()}

    def hook(name: str) -> Callable[..., None]:
        def fn(module: Any, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach()
            mask = state["mask"]
            if x.dim() == 3 and mask is not None and mask.shape == x.shape[:2]:
                x = x[mask]  # padding tokens are not inputs the layer must serve
            x = x.reshape(-1, x.shape[-1]).double()
            hess[name] += x.T @ x
            state["seen"].add(name)
            if state["seen"] >= set(mods):
                raise _Stop

        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in mods.items()]
    try:
        with torch.no_grad():
            for features in batches:
                state["mask"] = features["attention_mask"].bool()
                state["seen"] = set()
                try:
                    auto(**{k: v for k, v in features.items() if k in _AUTO_INPUTS})
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    return hess


# --- the whole pipeline -----------------------------------------------------------------------
