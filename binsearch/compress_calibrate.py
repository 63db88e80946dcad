"""Calibrate a compressed encoder: short straight-through distillation on real text.

Post-training quantization minimises each weight's own error; what matters is
the sentence embedding. Here the float model is the teacher and the quantized
model the student, on a few thousand texts (the corpus to be indexed, or the
bundled Cranfield):

* each quantized Linear keeps a float *latent* weight and trainable scales;
  its forward weight is :func:`binsearch.quantize.quantize_ste` — the nearest
  representable value per entry, gradients straight through to the latent
  weight and exactly to the scales;
* biases and LayerNorms (float anyway) train too; the (quantized) embedding
  table and the position embeddings stay fixed;
* the loss matches the teacher's unit embeddings (``1 - cosine``) and its
  in-batch similarity matrix (mean squared difference), so both each vector
  and the geometry retrieval depends on are preserved.

At the end each weight's signs are re-read from its latent weight with the
learned scales and stored like a post-training result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from binsearch.compress import CompressedEncoder, QuantizedTensor, transformer_of
from binsearch.quantize import nearest_planes_torch, quantize_ste


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


def calibrate(
    model: Any,
    teacher: Any,
    compressed: CompressedEncoder,
    texts: Sequence[str],
    epochs: float = 1.0,
    batch_size: int = 16,
    lr: float = 1e-4,
    similarity_weight: float = 1.0,
    max_seq_length: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> CompressedEncoder:
    """Distil ``teacher`` (float) into ``model`` (carrying ``compressed``'s weights).

    Args:
        model: sentence-transformers model whose quantized weights equal
            ``compressed`` (as returned by :func:`binsearch.compress.compress_encoder`);
            updated in place to the calibrated weights.
        teacher: the float sentence-transformers model.
        compressed: the post-training tensors (their scales start the training).
        texts: calibration texts (non-empty strings).
        epochs: passes over ``texts`` (fractions allowed).
        batch_size: texts per step (also the in-batch similarity size).
        lr: Adam learning rate for latent weights, scales, biases and norms.
        similarity_weight: weight of the in-batch similarity term.
        max_seq_length: token cut-off during calibration (default: the model's own).

    Returns:
        The calibrated :class:`CompressedEncoder` (same bits, new signs and scales).
    """
    import torch
    from torch.nn.utils import parametrize

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("no calibration text")
    if batch_size < 2:
        raise ValueError(f"calibration needs batches of at least 2 texts, got {batch_size}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    auto = transformer_of(model)
    modules = dict(auto.named_modules())
    teacher_state = transformer_of(teacher).state_dict()
    table = {name for name, q in compressed.tensors.items() if _is_embedding(modules, name)}

    # Latent weights start at the float weights; the forward pass sees their quantization.
    for p in auto.parameters():
        p.requires_grad_(False)
    quantized: dict[str, Any] = {}
    for name, q in compressed.tensors.items():
        if name in table:
            continue  # the embedding table stays at its post-training quantization
        module = modules[name.rsplit(".", 1)[0]]
        with torch.no_grad():
            module.weight.copy_(teacher_state[name])
        parametrize.register_parametrization(
            module, "weight", _make_parametrization(q.scales, *q.shape)
        )
        quantized[name] = module
    trainable = [p for n, p in auto.named_parameters() if _trainable(n)]
    for p in trainable:
        p.requires_grad_(True)

    old_len = model.max_seq_length
    model.max_seq_length = min(max_seq_length or old_len, old_len)
    teacher.max_seq_length = model.max_seq_length
    target = teacher.encode(
        list(texts),
        batch_size=64,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=progress,
    )
    steps = max(1, math.ceil(epochs * len(texts) / batch_size))
    optimizer = torch.optim.Adam(trainable, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    model.eval()  # no dropout: the student should copy the deterministic teacher
    order = np.concatenate(
        [rng.permutation(len(texts)) for _ in range(math.ceil(steps * batch_size / len(texts)))]
    )
    bar = tqdm(range(steps), desc="calibrating", unit="step", disable=not progress)
    for step in bar:
        batch = order[step * batch_size : (step + 1) * batch_size]
        features = model.tokenize([texts[i] for i in batch])
        out = model(dict(features))["sentence_embedding"]
        out = torch.nn.functional.normalize(out, dim=-1)
        ref = torch.from_numpy(target[batch])
        cos_loss = (1 - (out * ref).sum(-1)).mean()
        sim_loss = ((out @ out.T - ref @ ref.T) ** 2).mean()
        loss = cos_loss + similarity_weight * sim_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():  # scales must stay positive for the nearest-value search
            for module in quantized.values():
                module.parametrizations.weight[0].scales.clamp_(min=1e-8)
        bar.set_postfix(cos=f"{1 - cos_loss.item():.4f}")

    # Freeze: read each weight's signs from its latent weight under the learned scales.
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
    for p in auto.parameters():
        p.requires_grad_(False)
    model.max_seq_length = old_len
    teacher.max_seq_length = old_len
    config = dict(compressed.config)
    config["calibration"] = {
        "texts": len(texts),
        "epochs": epochs,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "similarity_weight": similarity_weight,
        "max_seq_length": max_seq_length,
        "loss": "1 - cosine + w * MSE(in-batch similarity)",
    }
    return CompressedEncoder(tensors, config)


def _is_embedding(modules: dict[str, Any], name: str) -> bool:
    from torch import nn

    return isinstance(modules.get(name.rsplit(".", 1)[0]), nn.Embedding)


def _trainable(name: str) -> bool:
    """Latent weights, scales, biases and norms train; embeddings stay fixed."""
    return "embeddings" not in name
