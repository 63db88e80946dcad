"""GPTQ's column order on single MiniLM Linear weights: the Hessian-weighted error
``tr(E H E^T) / tr(W H W^T)`` of residual-binary GPTQ in natural order, in act order
(columns by decreasing ``H`` diagonal), act order with 10x the damping, and natural
order with 4 rounds, on the float model's inputs of the compressor's 128 calibration
texts (the default sources). Prints one JSON line per weight and plane count::

    python benchmarks/encoder_gptq_order.py --layers 0 --planes 3,4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROLES = ("attention.self.query", "attention.output.dense", "intermediate.dense", "output.dense")
VARIANTS = {
    "natural": {"act_order": False},
    "act": {"act_order": True},
    "act_damp0.1": {"act_order": True, "damp": 0.1},
    "natural_rounds4": {"act_order": False, "rounds": 4},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="0")
    parser.add_argument("--planes", default="3,4")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from binsearch.cli.compress import DEFAULT_SOURCES, calibration_sources, calibration_texts
    from binsearch.encoder.compress.format import transformer_of
    from binsearch.encoder.compress.gptq import gptq_binarize, input_hessians
    from binsearch.encoder.model import Encoder

    torch.set_num_threads(1)
    texts = calibration_texts(calibration_sources(",".join(DEFAULT_SOURCES), []), 4000)
    rng = np.random.default_rng(0)  # as compress_encoder draws them: probe texts, then GPTQ's
    rng.permutation(len(texts))
    calib = [texts[i] for i in rng.permutation(len(texts))[:128]]
    model = Encoder(None).model
    auto = transformer_of(model)
    model.max_seq_length = 128
    batches = [model.tokenize(calib[i : i + 32]) for i in range(0, len(calib), 32)]
    modules = dict(auto.named_modules())
    for layer in (int(x) for x in args.layers.split(",")):
        names = [f"encoder.layer.{layer}.{role}" for role in ROLES]
        hess = input_hessians(auto, batches, {n: modules[n] for n in names})
        for name in names:
            w = modules[name].weight.detach().numpy()
            h = hess[name].numpy()
            base = float(np.einsum("rc,cd,rd->", w, h, w))
            for planes in (int(x) for x in args.planes.split(",")):
                row: dict = {"weight": name, "planes": planes}
                for label, options in VARIANTS.items():
                    started = time.perf_counter()
                    signs, scales = gptq_binarize(w, h, planes, **options)
                    e = w - np.einsum("prc,prx->rc", signs.astype(np.float32), scales)
                    row[label] = round(float(np.einsum("rc,cd,rd->", e, h, e)) / base, 5)
                    row[f"{label}_s"] = round(time.perf_counter() - started, 1)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
