"""Distil a compressed encoder from its float teacher, within a time budget.

Post-training quantization (:mod:`binsearch.encoder.compress.compressor`) minimises each layer's
own output error; what retrieval needs is the sentence embedding and the
geometry between embeddings. Here the float model is the teacher and the
quantized model the student, on real unlabeled text:

* each quantized Linear keeps a float *latent* weight (starting at its
  quantized value, so GPTQ's choices are the starting point) and trainable
  scales; its forward weight is :func:`binsearch.codes.quantize.quantize_ste` — the
  nearest representable value per entry, gradients straight through to the
  latent weight and exactly to the scales;
* biases and LayerNorms (float anyway) train too; the embedding tables stay
  at their post-training quantization (``train_tables=True`` trains them too);
* the loss (``layerwise=True``, the default) is

  ``(1 - cos(e_s, e_t))``  +  ``KL(softmax(S_t / T) || softmax(S_s / T))``
  +  ``w_h * mean_l MSE(h_s^l, h_t^l) / var(h_t^l)``
  +  ``w_h * mean_l KL(A_t^l || A_s^l)``

  — each embedding, the in-batch similarity *ranking* (a contrastive loss
  against the teacher's similarities ``S_t``), every layer's hidden states
  and every layer's attention maps ``A`` (TernaryBERT-style layer-wise
  distillation); ``layerwise=False`` keeps only the first two terms (the pilots
  that chose layer-wise, and dropped a PV-Tuning-style sign update, are in
  ``results/encoder/``).

Training stops at ``deadline`` (a ``time.monotonic()`` value) or after
``epochs``; the learning rate follows a cosine over whichever comes first.
At the end each weight's signs are re-read from its latent weight with the
learned scales and stored like a post-training result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from binsearch.codes.quantize import nearest_planes_torch, quantize_ste
from binsearch.encoder.compress.format import (
    CompressedEncoder,
    QuantizedTensor,
    target_name,
    transformer_of,
)


def _make_parametrization(scales: np.ndarray, rows: int, cols: int) -> Any:
    import torch
    from torch import nn

    class QuantizedWeight(nn.Module):
        """``weight = quantize_ste(latent, scales)`` over (rows, groups, g) scale groups."""

        def __init__(self) -> None:
            super().__init__()
            # (K, rows, groups) -> (K, rows, groups, 1): one scale per plane and group
            self.scales = nn.Parameter(torch.from_numpy(scales.astype(np.float32))[..., None])

        def forward(self, latent: torch.Tensor) -> torch.Tensor:
            groups = self.scales.shape[2]
            grouped = latent.reshape(rows, groups, cols // groups)
            return quantize_ste(grouped, self.scales).reshape(rows, cols)

    return QuantizedWeight()


def attention_log_probs(query: Any, key: Any, mask: Any, heads: int) -> Any:
    """Log attention probabilities ``(B, heads, L, L)`` from a layer's query and key
    projections ``(B, L, h)``; padded keys (``mask`` (B, L) bool False) get none.

    Computed from the projections (caught by hooks) rather than asked of the
    model, so it works whatever attention kernel the model runs.
    """
    import torch

    b, length, h = query.shape
    q = query.reshape(b, length, heads, h // heads).transpose(1, 2)
    k = key.reshape(b, length, heads, h // heads).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(h // heads)
    scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
    return torch.log_softmax(scores, dim=-1)


def distillation_loss(
    out: Any,
    ref: Any,
    hidden: Sequence[Any] | None = None,
    ref_hidden: Sequence[Any] | None = None,
    mask: Any = None,
    temperature: float = 0.05,
    hidden_weight: float = 1.0,
    attention: Sequence[Any] | None = None,
    ref_attention: Sequence[Any] | None = None,
) -> tuple[Any, Any]:
    """``(loss, mean cosine)`` of student embeddings ``out`` (B, d) to teacher ``ref`` (B, d).

    Both unit length. ``hidden`` / ``ref_hidden``: per-layer hidden states
    ``(B, L, h)``, compared on the real tokens (``mask`` (B, L) bool).
    ``attention`` / ``ref_attention``: per-layer log attention probabilities
    ``(B, heads, L, L)`` (:func:`attention_log_probs`); their term is the KL
    from the teacher's, per real query token and head, averaged over layers.
    """
    import torch
    import torch.nn.functional as F

    cos = (out * ref).sum(-1)
    loss = (1 - cos).mean()
    if out.shape[0] > 1:  # ranking within the batch: the teacher's similarities as soft labels
        target = F.softmax(ref @ ref.T / temperature, dim=-1)
        loss = loss + F.kl_div(
            F.log_softmax(out @ out.T / temperature, dim=-1), target, reduction="batchmean"
        )
    if hidden and ref_hidden:
        layer_terms = []
        for h, t in zip(hidden, ref_hidden, strict=True):
            h, t = (h[mask], t[mask]) if mask is not None else (h, t)
            layer_terms.append(((h - t) ** 2).mean() / t.var().clamp(min=1e-6))
        loss = loss + hidden_weight * torch.stack(layer_terms).mean()
    if attention and ref_attention and mask is not None:
        terms = []
        for a, t in zip(attention, ref_attention, strict=True):
            kl = (t.exp() * (t - a)).sum(-1)  # (B, heads, L): one per query token and head
            terms.append(kl.mean(1)[mask].mean())
        loss = loss + hidden_weight * torch.stack(terms).mean()
    return loss, cos.mean()


def calibrate(
    model: Any,
    teacher: Any,
    compressed: CompressedEncoder,
    texts: Sequence[str],
    epochs: float = 1.0,
    batch_size: int = 16,
    lr: float = 1e-4,
    max_seq_length: int | None = 128,
    layerwise: bool = True,
    deadline: float | None = None,
    seed: int = 0,
    progress: bool = True,
    train_tables: bool = False,
) -> CompressedEncoder:
    """Distil ``teacher`` (float) into ``model`` (carrying ``compressed``'s weights).

    Args:
        model: sentence-transformers model whose quantized weights equal
            ``compressed``; updated in place to the calibrated weights.
        teacher: the float sentence-transformers model.
        compressed: the post-training tensors (their scales start the training).
        texts: calibration texts (non-empty strings).
        epochs: passes over ``texts`` at most (fractions allowed).
        batch_size: texts per step (also the in-batch ranking size).
        lr: Adam learning rate for latent weights, scales, biases and norms.
        max_seq_length: token cut-off during calibration (None: the model's own).
        layerwise: add every layer's hidden states to the loss.
        deadline: ``time.monotonic()`` at which to stop, whatever ``epochs`` says.
        train_tables: also train the (uniformly) quantized embedding tables,
            the word table included, the same way as the Linear weights.

    Returns:
        The calibrated :class:`CompressedEncoder` (same bits, new signs and scales
        of the Linear weights).
    """
    import torch

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("no calibration text")
    if batch_size < 2:
        raise ValueError(f"calibration needs batches of at least 2 texts, got {batch_size}")
    torch.manual_seed(seed)
    started = time.monotonic()
    auto, t_auto = transformer_of(model), transformer_of(teacher)
    quantized, trainable = _latent_weights(auto, t_auto, compressed, train_tables)
    maps, handles = _attention_maps(auto, t_auto, layerwise)
    # Ask both transformers for every layer's hidden states (restored afterwards).
    old_hidden = auto.config.output_hidden_states, t_auto.config.output_hidden_states
    auto.config.output_hidden_states = t_auto.config.output_hidden_states = layerwise
    old_len, t_old_len = model.max_seq_length, teacher.max_seq_length
    model.max_seq_length = min(max_seq_length or old_len, old_len)
    teacher.max_seq_length = model.max_seq_length
    steps = max(1, math.ceil(epochs * len(texts) / batch_size))
    run = _Run(model, teacher, texts, batch_size, lr, steps, started, deadline, seed, layerwise)
    done, running = run.train(torch.optim.Adam(trainable, lr=lr), quantized, maps, progress)
    for handle in handles:
        handle.remove()
    tensors = _freeze(quantized, compressed)
    for p in auto.parameters():
        p.requires_grad_(False)
    model.max_seq_length, teacher.max_seq_length = old_len, t_old_len
    auto.config.output_hidden_states, t_auto.config.output_hidden_states = old_hidden
    config = dict(compressed.config)
    config["calibration"] = {
        "texts": len(texts),
        "steps": done,
        "planned_steps": steps,
        "seconds": round(time.monotonic() - started, 1),
        "batch_size": batch_size,
        "lr": lr,
        "max_seq_length": max_seq_length,
        "running_cosine": running,
        "train_tables": train_tables,
        "loss": "1 - cosine + in-batch KL(teacher || student similarities)"
        + (" + layer-wise hidden-state MSE + attention-map KL" if layerwise else ""),
    }
    return CompressedEncoder(tensors, config)


def _latent_weights(
    auto: Any, t_auto: Any, compressed: CompressedEncoder, train_tables: bool
) -> tuple[dict[str, Any], list[Any]]:
    """Give each quantized Linear (and table, if asked) a latent float weight; what trains."""
    import torch
    from torch.nn.utils import parametrize

    modules = dict(auto.named_modules())
    for p in list(auto.parameters()) + list(t_auto.parameters()):
        p.requires_grad_(False)
    quantized: dict[str, Any] = {}
    for name, q in compressed.tensors.items():
        module = modules.get(target_name(name).rsplit(".", 1)[0])
        table = train_tables and isinstance(module, torch.nn.Embedding)
        if q.rows is not None or not (isinstance(module, torch.nn.Linear) or table):
            continue  # embedding tables stay at their post-training quantization unless asked
        parametrization = _make_parametrization(q.scales, *q.shape)
        parametrize.register_parametrization(module, "weight", parametrization)
        quantized[name] = module
    trainable = [
        p
        for n, p in auto.named_parameters()
        if "embeddings" not in n or (train_tables and ".parametrizations." in n)
    ]
    for p in trainable:
        p.requires_grad_(True)
    return quantized, trainable


def _attention_maps(auto: Any, t_auto: Any, layerwise: bool) -> tuple[Any, list[Any]]:
    """Hooks that catch each layer's query and key projections (layer-wise only).

    Returns ``(maps, handles)``: ``maps(who, mask)`` gives the attention log-probabilities
    caught since its last call for ``"student"`` or ``"teacher"``.
    """
    caught: dict[str, list[Any]] = {"student": [], "teacher": []}
    handles = []
    if layerwise:
        for who, root in (("student", auto), ("teacher", t_auto)):
            for name, module in root.named_modules():
                if name.endswith(("attention.self.query", "attention.self.key")):
                    handles.append(
                        module.register_forward_hook(
                            lambda _m, _i, o, who=who: caught[who].append(o)
                        )
                    )
    heads = int(getattr(auto.config, "num_attention_heads", 1))

    def maps(who: str, mask: Any) -> list[Any]:
        pairs = caught[who]
        caught[who] = []
        return [
            attention_log_probs(pairs[i], pairs[i + 1], mask, heads)
            for i in range(0, len(pairs) - 1, 2)
        ]

    return maps, handles


class _Run:
    """The training loop's schedule: batches, a cosine learning rate, the deadline, the bar."""

    def __init__(
        self,
        model: Any,
        teacher: Any,
        texts: list[str],
        batch_size: int,
        lr: float,
        steps: int,
        started: float,
        deadline: float | None,
        seed: int,
        layerwise: bool,
    ) -> None:
        self.model, self.teacher, self.texts = model, teacher, texts
        self.batch_size, self.lr, self.steps = batch_size, lr, steps
        self.started, self.deadline, self.layerwise = started, deadline, layerwise
        rng = np.random.default_rng(seed)
        rounds = math.ceil(steps * batch_size / len(texts))
        self.order = np.concatenate([rng.permutation(len(texts)) for _ in range(rounds)])

    def train(
        self, optimizer: Any, quantized: dict[str, Any], maps: Any, progress: bool
    ) -> tuple[int, float | None]:
        """Run the steps (or until the deadline); returns ``(steps done, running cosine)``."""
        self.model.eval()  # no dropout: the student should copy the deterministic teacher
        deadline, started = self.deadline, self.started
        # with a deadline the bar runs against the time budget (the step count is only a cap)
        timed = deadline is not None and deadline - started < self.steps * 60.0
        total = round(max(deadline - started, 1.0)) if timed else self.steps
        unit = "s" if timed else "step"
        bar = tqdm(total=total, desc="distilling", unit=unit, disable=not progress)
        running, done = None, 0
        for step in range(self.steps):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            # cosine schedule over the run's budget: steps, or time when a deadline binds first
            frac = step / self.steps
            if deadline is not None:
                frac = max(frac, (now - started) / max(deadline - started, 1e-9))
            for group in optimizer.param_groups:
                group["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
            batch = self.order[step * self.batch_size : (step + 1) * self.batch_size]
            loss, cos = self.step(optimizer, quantized, maps, batch)
            running = cos if running is None else 0.9 * running + 0.1 * cos
            done += 1
            bar.update(min(round(time.monotonic() - started), total) - bar.n if timed else 1)
            bar.set_postfix(step=done, loss=f"{loss:.4f}", cos=f"{running:.4f}")
        bar.close()
        return done, running

    def step(
        self, optimizer: Any, quantized: dict[str, Any], maps: Any, batch: np.ndarray
    ) -> tuple[float, float]:
        """One distillation step on the texts ``batch``; returns ``(loss, cosine)``."""
        import torch

        features = dict(self.model.tokenize([self.texts[i] for i in batch]))
        mask = features["attention_mask"].bool()
        with torch.no_grad():
            t_out = self.teacher(dict(features))
            ref = torch.nn.functional.normalize(t_out["sentence_embedding"], dim=-1)
            ref_maps = maps("teacher", mask)
        s_out = self.model(dict(features))
        out = torch.nn.functional.normalize(s_out["sentence_embedding"], dim=-1)
        hidden = ref_hidden = None
        if self.layerwise and "all_layer_embeddings" in s_out:
            hidden, ref_hidden = s_out["all_layer_embeddings"], t_out["all_layer_embeddings"]
        loss, cos = distillation_loss(
            out,
            ref,
            hidden,
            ref_hidden,
            mask,
            attention=maps("student", mask),
            ref_attention=ref_maps,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # scales must stay positive for the nearest-value search
            for module in quantized.values():
                module.parametrizations.weight[0].scales.clamp_(min=1e-8)
        return loss.item(), cos.item()


def _freeze(quantized: dict[str, Any], compressed: CompressedEncoder) -> dict[str, Any]:
    """Each weight's signs re-read from its latent weight under the learned scales."""
    import torch
    from torch.nn.utils import parametrize

    tensors = dict(compressed.tensors)
    with torch.no_grad():
        for name, module in quantized.items():
            param = module.parametrizations.weight
            latent, scales = param.original, param[0].scales
            rows, cols = latent.shape
            grouped = latent.reshape(rows, scales.shape[2], cols // scales.shape[2])
            signs = nearest_planes_torch(grouped, scales).reshape(-1, rows, cols)
            tensors[name] = QuantizedTensor.from_signs(
                signs.to(torch.int8).numpy(), scales[..., 0].numpy()
            )
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            module.weight.copy_(torch.from_numpy(tensors[name].dequantize()))
    return tensors
