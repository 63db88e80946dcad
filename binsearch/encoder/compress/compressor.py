"""Compress a sentence encoder's weights with the quantizer core (the ALGORITHM).

Every weight matrix of the transformer — each ``nn.Linear`` weight and the
word, position and token-type embedding tables — becomes residual sign planes
with per-row scales (:mod:`binsearch.codes.quantize`). ``bits`` is a budget of
*stored* bits per weight averaged over all of them, scales and tier indices
counted. The pieces, in the order :func:`compress_encoder` runs them:

1. **sensitivity** (:func:`measure_sensitivity`): each matrix quantized alone
   at a few bit widths; the loss is ``1 - mean cosine`` of the sentence
   embeddings of calibration text to the float ones;
2. **allocation** (:func:`allocate_budget`): bits go where the measured loss
   falls most per stored bit, under the one budget (HAWQ-style, losses
   assumed additive);
3. **the word-embedding table** is one matrix like the others, every row
   at the same plane count (frequency tiers, :func:`quantize_table`, fitted
   on the calibration text, hurt other text and are no longer the default);
4. **GPTQ on the residual-binary grid** (:func:`gptq_binarize`): Linear
   weights are quantized column by column against the Hessian ``X^T X`` of
   their real inputs, each rounding error pushed onto the columns not yet
   quantized; layer by layer, so later layers see the already quantized
   earlier ones. Scales are then refit to the same Hessian-weighted error.

With a ``deadline``, probes and GPTQ stop early (see :func:`compress_encoder`).
Distillation (:mod:`binsearch.encoder.compress.calibrate`) can then tune what remains.
The on-disk format lives in :mod:`binsearch.encoder.compress.format`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from binsearch.codes.quantize import binarize_weight, dequantize_weight, sign_patterns
from binsearch.encoder.compress.format import (  # noqa: F401  (re-exported: the format's public names)
    COMPRESSED_FORMAT_VERSION,
    CONFIG_FILE,
    MAX_BITS,
    TIER_SEP,
    CompressedEncoder,
    CompressionError,
    QuantizedTensor,
    apply_weights,
    directory_size,
    is_compressed,
    load_compressed,
    read_compressed,
    save_compressed,
    target_name,
    transformer_of,
)

SCALE_BITS = 16  # scales are stored as float16


def check_bits(bits: float, low: float = 1, high: float = MAX_BITS) -> float:
    """``bits`` as a number in ``low..high``, else :class:`CompressionError`."""
    if isinstance(bits, bool) or not isinstance(bits, (int, float)) or not low <= bits <= high:
        raise CompressionError(f"bits per weight must be from {low} to {high}, got {bits}")
    return bits


def quantizable_weights(auto_model: Any, embeddings: bool = True) -> list[str]:
    """State-dict names of the weight matrices: every ``nn.Linear`` weight, plus
    (with ``embeddings``) every ``nn.Embedding`` table, the word table last.

    Raises :class:`CompressionError` when the model has no Linear layer.
    """
    from torch import nn

    names = [f"{n}.weight" for n, m in auto_model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise CompressionError("the model has no nn.Linear layers to compress")
    if embeddings:
        table = word_embedding_name(auto_model)
        others = [
            f"{n}.weight"
            for n, m in auto_model.named_modules()
            if isinstance(m, nn.Embedding) and f"{n}.weight" != table
        ]
        names += others + ([table] if table else [])
    return names


def word_embedding_name(auto_model: Any) -> str | None:
    """State-dict name of the input (word) embedding table, or None."""
    get = getattr(auto_model, "get_input_embeddings", None)
    table = get() if get else None
    for name, module in auto_model.named_modules():
        if table is not None and module is table:
            return f"{name}.weight"
    return None


def padded(cols: int) -> int:
    """Stored sign bits per row and plane: whole uint64 words (the code format's)."""
    return 64 * -(-cols // 64)


def stored_bits(shape: tuple[int, int], planes: int) -> int:
    """Stored bits of a ``(rows, cols)`` weight at ``planes`` with per-row scales."""
    rows, cols = shape
    return planes * rows * (padded(cols) + SCALE_BITS)


def compress_weights(
    weights: Mapping[str, np.ndarray],
    bits: int | Mapping[str, int],
    group_size: int | None = None,
    iters: int = 10,
    progress: bool = True,
) -> dict[str, QuantizedTensor]:
    """Post-training quantization of named 2-D float weights (no data needed).

    ``bits`` is one K for all, or K per name. Scales are per output row, or per
    ``group_size`` columns when that divides the row.
    """
    out: dict[str, QuantizedTensor] = {}
    for name, w in tqdm(weights.items(), desc="quantizing", unit="tensor", disable=not progress):
        k = int(check_bits(bits[name] if isinstance(bits, Mapping) else bits))
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 2:
            raise CompressionError(f"{name}: expected a 2-D weight, got shape {w.shape}")
        g = group_size if group_size and w.shape[1] % group_size == 0 else None
        signs, scales = binarize_weight(w, k, group_size=g, iters=iters)
        out[name] = QuantizedTensor.from_signs(signs, scales)
    return out


# --- the word-embedding table: row tiers by token frequency ---------------------------------


def token_weights(tokenizer: Any, texts: Sequence[str], rows: int) -> np.ndarray:
    """How much each table row matters: float64 ``(rows,)``, summing to 1.

    Half from token counts in ``texts``, half from a Zipf prior on the
    vocabulary order (WordPiece vocabularies list pieces by frequency), so
    tokens the calibration text never shows still rank sensibly.
    """
    counts: Counter[int] = Counter()
    for start in range(0, len(texts), 256):
        for ids in tokenizer(list(texts[start : start + 256]), truncation=True)["input_ids"]:
            counts.update(ids)
    seen = np.zeros(rows, dtype=np.float64)
    for i, c in counts.items():
        if 0 <= i < rows:
            seen[i] = c
    prior = 1.0 / (100.0 + np.arange(rows, dtype=np.float64))
    seen = seen / seen.sum() if seen.sum() else prior / prior.sum()
    return 0.5 * seen + 0.5 * prior / prior.sum()


def tier_plan(
    errors: np.ndarray, weights: np.ndarray, cols: int, budget: float, max_planes: int
) -> np.ndarray:
    """Planes per row (1..max_planes) minimising ``sum_r weights_r * errors[r, k]`` under
    an average of ``budget`` stored bits per weight (index and scales counted).

    ``errors``: float ``(rows, max_planes)``, squared error of row ``r`` at ``k+1``
    planes. Solved by a Lagrange multiplier on the bits (bisection).
    """
    rows = errors.shape[0]
    cost = np.arange(1, max_planes + 1) * (padded(cols) + SCALE_BITS) + 16.0  # + uint16 index
    cap = budget * rows * cols
    if cost[0] * rows > cap:
        return np.ones(rows, dtype=np.int64)
    loss = weights[:, None] * errors

    def pick(lam: float) -> np.ndarray:
        return np.argmin(loss + lam * cost[None, :], axis=1)

    lo, hi = 0.0, float(loss.max() / (cost[1] - cost[0]) + 1.0) if max_planes > 1 else 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if cost[pick(mid)].sum() > cap:
            lo = mid
        else:
            hi = mid
    return pick(hi) + 1


def table_fits(
    w: np.ndarray, max_planes: int = 4, iters: int = 0
) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Every row of a table quantized at 1..``max_planes`` planes.

    Returns ``({K: (signs, scales)}, errors)`` with ``errors`` float ``(rows,
    max_planes)``: each row's squared error at each plane count.
    """
    w = np.asarray(w, dtype=np.float32)
    fits = {k: binarize_weight(w, k, iters=iters) for k in range(1, max_planes + 1)}
    errors = np.stack([((w - dequantize(s, a)) ** 2).sum(1) for s, a in fits.values()], axis=1)
    return fits, errors


def quantize_table(
    fits: Mapping[int, tuple[np.ndarray, np.ndarray]],
    errors: np.ndarray,
    weights: np.ndarray,
    budget: float,
) -> dict[int, QuantizedTensor]:
    """Row tiers of an embedding table under ``budget`` stored bits per weight.

    :func:`tier_plan` picks each row's planes from its frequency ``weights`` and
    its ``errors`` (from :func:`table_fits`). Returns ``{K: tier}``, each tier
    carrying its row indices.
    """
    max_planes = errors.shape[1]
    cols = fits[1][0].shape[-1]
    planes = tier_plan(errors, weights, cols, budget, max_planes)
    tiers = {}
    for k in range(1, max_planes + 1):
        rows = np.flatnonzero(planes == k)
        if rows.size:
            signs, scales = fits[k]
            tiers[k] = QuantizedTensor.from_signs(signs[:, rows], scales[:, rows], rows=rows)
    return tiers


def table_state(tiers: Mapping[int, QuantizedTensor], shape: tuple[int, int]) -> np.ndarray:
    """The dequantized table ``shape`` from its tiers."""
    out = np.zeros(shape, dtype=np.float32)
    for q in tiers.values():
        out[q.rows.astype(np.int64)] = q.dequantize()
    return out


# --- sensitivity and the one budget ---------------------------------------------------------


def embed_fn(model: Any, texts: Sequence[str]) -> Callable[[], np.ndarray]:
    """A function giving ``texts``' unit embeddings under the model's current weights."""

    def embed() -> np.ndarray:
        return model.encode(
            list(texts), batch_size=64, convert_to_numpy=True, normalize_embeddings=True
        )

    return embed


def measure_sensitivity(
    model: Any,
    texts: list[str],
    options: Mapping[str, Mapping[Any, tuple[int, np.ndarray]]],
    progress: bool = True,
    deadline: float | None = None,
) -> dict[str, dict[Any, tuple[int, float]]]:
    """How much each weight, quantized alone, moves the sentence embeddings.

    ``options`` maps a weight name to candidate quantizations ``{label: (stored
    bits, dequantized float32 weight)}``. Each candidate is put in alone, the
    ``texts`` are encoded, and its loss is ``1 - mean cosine`` to the float
    embeddings. Returns ``{name: {label: (stored bits, loss)}}`` for the weights
    probed before ``deadline`` (a ``time.monotonic()`` value; all without one);
    the model is restored to float afterwards.
    """
    import time

    import torch

    auto = transformer_of(model)
    params = dict(auto.named_parameters())
    embed = embed_fn(model, texts)
    reference = embed()
    out: dict[str, dict[Any, tuple[int, float]]] = {}
    for name in tqdm(list(options), desc="sensitivity", unit="weight", disable=not progress):
        if deadline is not None and time.monotonic() >= deadline:
            break
        original = params[name].detach().clone()
        out[name] = {}
        for label, (cost, weight) in options[name].items():
            apply_weights(auto, {name: weight})
            out[name][label] = (cost, float(1 - (embed() * reference).sum(1).mean()))
        with torch.no_grad():
            params[name].copy_(original)
    return out


def allocate_budget(
    losses: Mapping[str, Mapping[Any, tuple[int, float]]], total_weights: int, budget: float
) -> dict[str, Any]:
    """One option per weight under ``budget`` stored bits per weight on average.

    ``losses``: ``{name: {label: (stored bits, loss)}}``. Starts every weight at
    its cheapest option and repeatedly takes the upgrade (to any dearer option)
    with the largest loss reduction per added bit that still fits. Raises
    :class:`CompressionError` when even the cheapest options exceed the budget.
    """
    cap = budget * total_weights + 1e-6
    plan = {name: min(opts, key=lambda k: opts[k][0]) for name, opts in losses.items()}
    used = sum(losses[n][plan[n]][0] for n in plan)
    if used > cap:
        raise CompressionError(
            f"a budget of {budget} bits per weight is below the fewest bits "
            f"({used / total_weights:.3f} with scales)"
        )
    while True:
        best, best_gain = None, 0.0
        for name, opts in losses.items():
            cost0, loss0 = opts[plan[name]]
            for label, (cost, loss) in opts.items():
                if cost <= cost0 or used - cost0 + cost > cap:
                    continue
                gain = (loss0 - loss) / (cost - cost0)
                if best is None or gain > best_gain:
                    best, best_gain = (name, label), gain
        if best is None or best_gain <= 0:
            return plan
        name, label = best
        used += losses[name][label][0] - losses[name][plan[name]][0]
        plan[name] = label


def allocate_bits(
    losses: Mapping[str, Mapping[int, float]], sizes: Mapping[str, int], budget: float
) -> dict[str, int]:
    """Sign bits per weight under an average ``budget`` of sign bits (scales not
    counted), by sensitivity: :func:`allocate_budget` with cost ``K * size``."""
    options = {n: {k: (k * sizes[n], loss) for k, loss in o.items()} for n, o in losses.items()}
    return allocate_budget(options, sum(sizes.values()), budget)


# --- GPTQ on the residual-binary grid -------------------------------------------------------


def gptq_binarize(
    w: np.ndarray, hessian: np.ndarray, planes: int, rounds: int = 2, damp: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``w`` to ``planes`` residual sign planes minimising ``tr(E H E^T)``.

    Args:
        w: float32 ``(rows, cols)``, a Linear weight (rows = outputs).
        hessian: float ``(cols, cols)``, ``X^T X`` of the layer's inputs.
        planes: bits ``K``; each row can take the ``2^K`` values ``sum_k a_k s_k``.
        rounds: alternations of (GPTQ signs, Hessian-weighted scale refit).
        damp: ridge added to H, relative to its mean diagonal.

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
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    patterns = torch.from_numpy(sign_patterns(planes)).double()  # (2^K, K)
    signs0, scales0 = binarize_weight(w, planes, iters=10)

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
    return best_signs.to(torch.int8).numpy(), best_alpha.T[..., None].float().numpy()


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
) -> dict[str, QuantizedTensor]:
    """GPTQ every Linear weight in ``plan`` (name -> planes), layer by layer, in place.

    For each layer the calibration ``texts`` are run through the model (whose
    earlier layers are already quantized) up to that layer, accumulating each
    Linear's input Hessian ``X^T X`` over real (non-padding) tokens; then the
    layer's weights are quantized by :func:`gptq_binarize` and written back.
    A layer that would end after ``deadline`` (judged by the slowest layer so
    far) and all after it get the weight-only fit instead; ``done``, when
    given, receives the names that had GPTQ.
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
                signs, scales = gptq_binarize(w, hess[name].numpy(), int(plan[name]))
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


def linear_options(bits: float) -> tuple[int, ...]:
    """Plane counts offered to each Linear weight for an average of ``bits``."""
    low = max(1, round(bits) - 1)
    return tuple(range(low, min(low + 4, MAX_BITS + 1)))


def table_options(bits: float) -> tuple[int, ...]:
    """Plane counts offered to the word-embedding table (uniform: every row alike).

    Two choices, ``round(bits) - 1`` and one more (2 or 3 planes at 3 bits, 1 or
    2 at 2 bits). Uniform rather than frequency tiers: tiers fitted on the
    calibration text (Cranfield) hurt other text (SciFact, 3 bits: nDCG@10
    0.6113 and cosine 0.905 with tiers at 2.1 bits, 0.6135 and 0.913 with a
    uniform 2-plane table at 2.08 bits); and the floor, because the short
    probes underrate the table's loss on unseen text (see the note).
    """
    low = max(1, round(bits) - 1)
    return (low, min(low + 1, MAX_BITS))


def compress_encoder(
    model_name_or_path: str | None,
    bits: float,
    texts: Sequence[str],
    sensitivity_texts: int = 8,
    gptq_texts: int = 128,
    max_seq_length: int = 128,
    deadline: float | None = None,
    progress: bool = True,
) -> tuple[Any, CompressedEncoder, dict[str, Any]]:
    """Quantize a whole encoder to ``bits`` stored bits per weight, data-aware.

    Args:
        model_name_or_path: as for :class:`binsearch.encoder.model.Encoder`.
        bits: average stored bits per weight over every weight matrix (scales
            counted).
        texts: calibration text (non-empty strings).
        sensitivity_texts: texts encoded per sensitivity probe.
        gptq_texts: texts whose activations give the GPTQ Hessians.
        max_seq_length: token cut-off for GPTQ.
        deadline: ``time.monotonic()`` by which quantization must end. The
            sensitivity probes get the first third of the time left (weights
            not probed by then borrow the losses of their role, e.g. every
            ``attention.self.query``); GPTQ stops before a layer that would
            overrun it, and the rest get the weight-only fit.

    Returns:
        ``(model, compressed, report)``: the sentence-transformers model carrying
        the dequantized weights, the compressed tensors, and the per-weight
        allocation with its measured losses. Seconds per stage and how many
        weights were probed and had GPTQ: ``compressed.config["quantization"]``.
    """
    import time

    from torch import nn

    from binsearch.encoder.model import Encoder

    check_bits(bits)
    started = time.monotonic()
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise CompressionError("no calibration text")
    encoder = Encoder(model_name_or_path)
    model = encoder.model
    auto = transformer_of(model)
    names = quantizable_weights(auto)
    table = word_embedding_name(auto)
    state = {n: p.detach().numpy().copy() for n, p in auto.named_parameters()}
    total = sum(state[n].size for n in names)
    rng = np.random.default_rng(0)
    probe = [texts[i] for i in rng.permutation(len(texts))[:sensitivity_texts]]

    # Candidates per weight: weight-only fits (GPTQ later improves the chosen Linear ones).
    options: dict[str, dict[Any, tuple[int, np.ndarray]]] = {}
    for name in tqdm(names, desc="candidates", unit="weight", disable=not progress):
        w = state[name]
        if name == table:
            ks: tuple[int, ...] = table_options(bits)
        elif w.size * 1000 >= total:
            ks = linear_options(bits)
        else:  # a matrix under 0.1% of the model (token types) is not worth a probe: 8 bits
            ks = (MAX_BITS,)
        options[name] = {
            k: (stored_bits(w.shape, k), dequantize(*binarize_weight(w, k, iters=3))) for k in ks
        }
    timings = {"candidates": time.monotonic() - started}
    old_len = model.max_seq_length
    model.max_seq_length = min(64, old_len)  # probes compare weights, not documents
    probe_deadline = (
        None if deadline is None else time.monotonic() + (deadline - time.monotonic()) / 3
    )
    losses = measure_sensitivity(model, probe, options, progress, deadline=probe_deadline)
    model.max_seq_length = old_len
    timings["sensitivity"] = time.monotonic() - started - timings["candidates"]
    probed = len(losses)
    losses = borrow_losses(losses, options)
    plan = allocate_budget(losses, total, bits)

    compressed: dict[str, QuantizedTensor] = {}
    for name in names:  # embeddings: weight-only (they have no input Hessian)
        if not isinstance(auto.get_submodule(name[:-7]), nn.Linear):
            compressed[name] = compress_weights({name: state[name]}, plan[name], progress=False)[
                name
            ]
    apply_weights(auto, {n: q.dequantize() for n, q in compressed.items()})
    linear = {n: plan[n] for n in names if n not in compressed}
    calib = [texts[i] for i in rng.permutation(len(texts))[:gptq_texts]]
    mark = time.monotonic()
    gptq_done: list[str] = []
    compressed.update(
        gptq_model(model, calib, linear, max_seq_length, progress, deadline, gptq_done)
    )
    timings["gptq"] = time.monotonic() - mark
    result = CompressedEncoder(
        compressed,
        {
            "source_model": encoder.name,
            "method": "sensitivity-allocated residual binarization; GPTQ for Linear weights; "
            "uniform word-embedding table",
            "bits_budget": bits,
            "calibration": None,
        },
    )
    report: dict[str, Any] = {
        name: {
            "shape": list(state[name].shape),
            "choice": plan[name],
            "stored_bits": losses[name][plan[name]][0] / state[name].size,
            "losses": {str(k): v[1] for k, v in losses[name].items()},
        }
        for name in names
    }
    result.config["allocation"] = report
    result.config["quantization"] = {
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "probed_weights": probed,
        "gptq_weights": len(gptq_done),
        "weights": len(names),
    }
    return model, result, report


def borrow_losses(
    losses: Mapping[str, Mapping[Any, tuple[int, float]]],
    options: Mapping[str, Mapping[Any, tuple[int, np.ndarray]]],
) -> dict[str, dict[Any, tuple[int, float]]]:
    """Losses for every weight in ``options``: a weight the probes did not reach
    takes the mean loss of the probed weights of its role (its name without the
    layer number) at each option, else zero (then it gets its cheapest option)."""
    import re

    out = {n: dict(v) for n, v in losses.items()}

    def role(name: str) -> str:
        return re.sub(r"\.\d+\.", ".", name)

    for name, opts in options.items():
        if name in out:
            continue
        peers = [losses[n] for n in losses if role(n) == role(name)]
        out[name] = {
            k: (cost, float(np.mean([p[k][1] for p in peers if k in p] or [0.0])))
            for k, (cost, _) in opts.items()
        }
    return out


def dequantize(signs: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 ``(rows, cols)`` from :func:`binsearch.codes.quantize.binarize_weight`'s output."""
    return dequantize_weight(signs, scales)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)``."""
    import time

    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started
