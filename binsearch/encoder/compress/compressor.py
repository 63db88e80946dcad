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
3. **the word-embedding table** gets a plane count per row
   (:mod:`binsearch.encoder.compress.rows`): rows the calibration text's
   tokens (several sources) use often get up to 8 planes, the long tail 1;
   a few table budgets are candidates for the allocator like the plane
   counts of the other matrices. Without row counts, every row alike;
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

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from binsearch.codes.quantize import binarize_weight, dequantize_weight
from binsearch.encoder.compress.format import (  # noqa: F401  (re-exported: the format's public names)
    COMPRESSED_FORMAT_VERSION,
    CONFIG_FILE,
    MAX_BITS,
    SCALE_BITS,
    TIER_SEP,
    CompressedEncoder,
    CompressionError,
    QuantizedTensor,
    apply_weights,
    directory_size,
    is_compressed,
    load_compressed,
    padded,
    read_compressed,
    save_compressed,
    target_name,
    transformer_of,
)
from binsearch.encoder.compress.gptq import gptq_binarize, gptq_model  # noqa: F401  (gptq_binarize re-exported)
from binsearch.encoder.compress.rows import coverage, quantize_rows, table_row_candidates


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


def linear_options(bits: float) -> tuple[int, ...]:
    """Plane counts offered to each Linear weight for an average of ``bits``."""
    low = max(1, round(bits) - 1)
    return tuple(range(low, min(low + 4, MAX_BITS + 1)))


def table_options(bits: float) -> tuple[int, ...]:
    """Plane counts offered to the word-embedding table when every row is alike
    (no token counts): ``round(bits) - 1`` and one more (2 or 3 planes at 3 bits).
    The floor, because the short probes underrate the table's loss on unseen text."""
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
    table_texts: Mapping[str, Sequence[str]] | None = None,
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
        table_texts: texts by source whose token counts allocate the word
            table's planes row by row (:func:`table_row_candidates`); None or
            empty: every row alike.

    Returns:
        ``(model, compressed, report)``: the sentence-transformers model carrying
        the dequantized weights, the compressed tensors, and the per-weight
        allocation with its measured losses. Seconds per stage and how many
        weights were probed and had GPTQ: ``compressed.config["quantization"]``.
    """
    import time

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

    options, row_plans, counts = _candidates(
        model, names, state, table, bits, table_texts, progress
    )
    timings = {"candidates": time.monotonic() - started}
    old_len, model.max_seq_length = model.max_seq_length, min(64, model.max_seq_length)
    left = None if deadline is None else time.monotonic() + (deadline - time.monotonic()) / 3
    losses = measure_sensitivity(model, probe, options, progress, deadline=left)
    model.max_seq_length = old_len
    timings["sensitivity"] = time.monotonic() - started - timings["candidates"]
    probed = len(losses)
    losses = borrow_losses(losses, options, state)
    plan = allocate_budget(losses, total, bits)

    compressed = _embeddings(auto, names, state, table, plan, row_plans)
    shapes = {n: state[n].shape for n in names}
    apply_weights(auto, CompressedEncoder(compressed).state_dict(shapes))
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
            + ("word-embedding table by rows (token counts)" if row_plans else "uniform table"),
            "bits_budget": bits,
            "calibration": None,
        },
    )
    result.config["quantization"] = {
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "probed_weights": probed,
        "gptq_weights": len(gptq_done),
        "weights": len(names),
    }
    report = _describe(result, names, state, plan, losses, table, row_plans, counts)
    return model, result, report


def _describe(
    result: CompressedEncoder,
    names: list[str],
    state: dict[str, np.ndarray],
    plan: dict[str, Any],
    losses: dict[str, Any],
    table: str,
    row_plans: dict[Any, Any],
    counts: Any,
) -> dict[str, Any]:
    """Record the allocation (and the table's rows) in ``result.config``; return the allocation."""
    report = _allocation_report(names, state, plan, losses)
    result.config["allocation"] = report
    if row_plans and plan[table] in row_plans:
        result.config["table_rows"] = _table_rows_report(
            row_plans[plan[table]], plan[table], counts
        )
    return report


def _candidates(
    model: Any,
    names: Sequence[str],
    state: Mapping[str, np.ndarray],
    table: str | None,
    bits: float,
    table_texts: Mapping[str, Sequence[str]] | None,
    progress: bool,
) -> tuple[dict[str, dict[Any, tuple[int, np.ndarray]]], dict[Any, np.ndarray], dict[str, Any]]:
    """Weight-only fits per weight and plane count (GPTQ later improves the chosen Linear ones).

    Returns ``(options, row_plans, counts)``: ``options[name][choice] = (stored bits,
    dequantized weight)``; for a word table allocated by rows, each choice's planes per
    row and the token counts by source.
    """
    total = sum(state[n].size for n in names)
    options: dict[str, dict[Any, tuple[int, np.ndarray]]] = {}
    row_plans: dict[Any, np.ndarray] = {}
    counts: dict[str, Any] = {}
    for name in tqdm(names, desc="candidates", unit="weight", disable=not progress):
        w = state[name]
        if name == table and table_texts:
            options[name], row_plans, counts = table_row_candidates(
                model.tokenizer, w, bits, table_texts
            )
            continue
        if name == table:
            ks: tuple[int, ...] = table_options(bits)
        elif w.size * 1000 >= total:
            ks = linear_options(bits)
        else:  # a matrix under 0.1% of the model (token types) is not worth a probe: 8 bits
            ks = (MAX_BITS,)
        options[name] = {
            k: (stored_bits(w.shape, k), dequantize(*binarize_weight(w, k, iters=3))) for k in ks
        }
    return options, row_plans, counts


def _embeddings(
    auto: Any,
    names: Sequence[str],
    state: Mapping[str, np.ndarray],
    table: str | None,
    plan: Mapping[str, Any],
    row_plans: Mapping[Any, np.ndarray],
) -> dict[str, QuantizedTensor]:
    """The weights that are not Linear (the embedding tables): weight-only, no input Hessian."""
    from torch import nn

    out: dict[str, QuantizedTensor] = {}
    for name in names:
        if name == table and plan[name] in row_plans:
            out.update(quantize_rows(state[name], row_plans[plan[name]], name))
        elif not isinstance(auto.get_submodule(name[:-7]), nn.Linear):
            out[name] = compress_weights({name: state[name]}, plan[name], progress=False)[name]
    return out


def _table_rows_report(widths: np.ndarray, choice: Any, counts: Mapping[str, Any]) -> dict:
    """The word table's row allocation: its budget, tokens per source, coverage per width."""
    return {
        "budget": choice[1],
        "sources": {s: int(c.sum()) for s, c in counts.items()},
        "coverage": {s: coverage(widths, c) for s, c in counts.items()},
    }


def _allocation_report(
    names: Sequence[str], state: Mapping[str, np.ndarray], plan: Mapping[str, Any], losses: Any
) -> dict[str, Any]:
    """Per weight: its shape, the chosen planes, stored bits per entry and every measured loss."""
    return {
        name: {
            "shape": list(state[name].shape),
            "choice": plan[name],
            "stored_bits": losses[name][plan[name]][0] / state[name].size,
            "losses": {str(k): v[1] for k, v in losses[name].items()},
        }
        for name in names
    }


def borrow_losses(
    losses: Mapping[str, Mapping[Any, tuple[int, float]]],
    options: Mapping[str, Mapping[Any, tuple[int, np.ndarray]]],
    state: Mapping[str, np.ndarray] | None = None,
) -> dict[str, dict[Any, tuple[int, float]]]:
    """Losses for every weight in ``options``: a weight the probes did not reach
    takes the mean loss of the probed weights of its role (its name without the
    layer number) at each option, else zero (then it gets its cheapest option).
    When no weight was probed at all (a deadline hit first) and ``state`` gives the
    float weights, every weight's loss is its relative squared weight error
    instead, so the budget is still spent where the weights lose most."""
    import re

    if not losses and state is not None:
        return {
            n: {
                k: (cost, float(((state[n] - q) ** 2).sum() / max((state[n] ** 2).sum(), 1e-30)))
                for k, (cost, q) in opts.items()
            }
            for n, opts in options.items()
        }

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
