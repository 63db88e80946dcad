"""Mixed precision: int8 on the layers that tolerate it, bf16 (or fp32) on the rest.

Chosen the way AMAQ and RAMP spend bits: measure each ``Linear``'s
*sensitivity* on calibration text, then quantise the tolerant ones.

1. The *base* is the model in bf16 (or fp32 when bf16 is not faithful). Each
   ``Linear`` in turn is replaced, alone, by torch's dynamic int8 version
   (weights per output channel, activations per batch; in float32 between a
   cast in and a cast out when the base is bf16); the calibration texts are
   encoded and the layer's sensitivity is the mean cosine it costs against
   float32's embeddings, beyond the base's own loss.
2. Layers are taken, least sensitive first, while the summed sensitivity stays
   within :data:`BUDGET` (well inside the fidelity bar: losses add up about
   linearly when small). The plan is the list of their names.
3. :func:`build_mixed` applies a plan to a copy of the model.

Whether the result is used is the chooser's business (fidelity bar and speed,
like any precision: :mod:`binsearch.encoder.precision`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

#: Summed sensitivity (mean cosine lost to fp32) a plan may spend; the fidelity bar
#: (mean cosine >= 0.999) is 1e-3, half of it is kept for the losses not adding up.
BUDGET = 5e-4


def _quantized(linear: torch.nn.Linear) -> torch.nn.Module:
    """torch's dynamic int8 version of one ``nn.Linear`` (per-channel weights)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices
        warnings.simplefilter("ignore")
        wrapped = torch.nn.Sequential(copy.deepcopy(linear).float())
        return quantize_dynamic(wrapped, {torch.nn.Linear: per_channel_dynamic_qconfig})[0]


class Int8Island(torch.nn.Module):
    """A dynamic int8 ``Linear`` inside a bf16 (or fp32) model: float32 in, the input's
    dtype out. ``.to(bfloat16)`` leaves it alone (its weights are packed int8)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.inner = _quantized(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.float()).to(x.dtype)


def linear_names(model: Any) -> list[str]:
    """The dotted names of the model's ``nn.Linear`` modules, in model order."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def _replace(model: Any, name: str, module: Any) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def build_mixed(model: Any, int8_layers: Sequence[str], base: str = "bf16") -> Any:
    """A copy of the float32 ``model`` in ``base`` precision (``bf16`` or ``fp32``) with
    the named ``Linear`` layers in dynamic int8."""
    if base not in ("bf16", "fp32"):
        raise ValueError(f"the base of a mixed model is bf16 or fp32, not {base!r}")
    out = copy.deepcopy(model)
    linears = dict(out.named_modules())
    for name in int8_layers:
        if not isinstance(linears.get(name), torch.nn.Linear):
            raise ValueError(f"no Linear layer {name!r} in the model")
        _replace(out, name, Int8Island(linears[name]))
    return out.to(torch.bfloat16) if base == "bf16" else out


def sensitivities(
    model: Any,
    texts: Sequence[str],
    encode: Callable[[Any, Sequence[str]], np.ndarray],
    base: str = "bf16",
    reference: np.ndarray | None = None,
) -> dict[str, float]:
    """Each ``Linear``'s cost in mean cosine to fp32 when it alone runs in int8,
    beyond the ``base`` precision's own cost (clipped at 0)."""
    reference = encode(model, texts) if reference is None else reference
    built = build_mixed(model, [], base)
    floor = 1.0 - float(np.mean(np.sum(encode(built, texts) * reference, axis=1)))
    originals = dict(built.named_modules())
    out = {}
    for name in linear_names(built):
        layer = originals[name]
        _replace(built, name, Int8Island(layer))
        emb = encode(built, texts)
        _replace(built, name, layer)
        loss = 1.0 - float(np.mean(np.sum(emb * reference, axis=1)))
        out[name] = max(0.0, loss - floor)
    return out


def plan(scores: dict[str, float], budget: float = BUDGET) -> list[str]:
    """The least sensitive layers whose summed sensitivity stays within ``budget``."""
    chosen, spent = [], 0.0
    for name in sorted(scores, key=lambda n: (scores[n], n)):
        if spent + scores[name] > budget:
            break
        chosen.append(name)
        spent += scores[name]
    return chosen
