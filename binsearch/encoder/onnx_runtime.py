"""ONNX Runtime inference for a sentence-transformers model: exported once, cached, verified.

The torch model is traced once (tokenizer → transformer → pooling → L2
normalisation, one graph) into ``<cache>/encoders/<name>-<key>/model.onnx``
beside a copy of its tokenizer and a ``meta.json``. ``<cache>`` is
``$BINSEARCH_CACHE`` or ``~/.cache/binsearch``; ``<key>`` changes whenever the
model's files, torch or onnxruntime change, so a stale export is never used.
An export is accepted only if its embeddings of a few probe texts (short ones
and one past the length limit) match the torch model's: token ids identical
and cosine >= ``VERIFY_COSINE``. Nothing is downloaded.

Why it exists: on two cores the torch path spends about half of a one-query
call in Python and framework overhead; the ONNX Runtime session does not (see
``results/encode/report.md``).

Example::

    directory = cached_export(model_dir, "all-MiniLM-L6-v2", load_torch=lambda: st_model)
    onnx_encoder = OnnxEncoder(directory)
    onnx_encoder.encode(["a query"])  # float32 (1, 384), unit rows
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

EXPORT_FORMAT = 2  # bump when the graph or meta.json changes shape
VERIFY_COSINE = 0.9999
#: Environment variable: lanes of the ONNX Runtime query path (see :class:`OnnxEncoder`).
LANES_ENV = "BINSEARCH_ONNX_LANES"
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_PROBES = [
    "a",
    "What is the effect of vitamin D on bone density?",
    "Binary codes make semantic search cheap.",
    " ".join(["Long documents are truncated at the model's maximum sequence length."] * 60),
]


class ExportError(RuntimeError):
    """The model cannot be exported or its export does not match torch."""


def cache_root() -> Path:
    """Where exports live: ``$BINSEARCH_CACHE`` or ``~/.cache/binsearch``."""
    env = os.environ.get("BINSEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "binsearch"


def export_key(model_dir: Path) -> str:
    """A short hash of the model's files (name, size, mtime) and the tool versions.

    Size and mtime rather than content keep this instant for a 90 MB model;
    a model directory rewritten in place gets a new mtime and so a new key.
    """
    from importlib.metadata import version  # not the imports themselves: torch takes seconds

    tools = f"{EXPORT_FORMAT} {version('torch')} {version('onnxruntime')} {version('transformers')}"
    h = hashlib.sha256(tools.encode())
    h.update(str(model_dir.resolve()).encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        stat = path.stat()
        h.update(f"{path.relative_to(model_dir)} {stat.st_size} {stat.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def export_dir(model_dir: Path, name: str) -> Path:
    """Where ``model_dir``'s export lives in the cache (it may not exist yet)."""
    return cache_root() / "encoders" / f"{name}-{export_key(model_dir)}"


def find_export(model_dir: Path, name: str) -> Path | None:
    """The directory of ``model_dir``'s finished export, or None when none is cached."""
    target = export_dir(model_dir, name)
    return target if (target / "meta.json").is_file() else None


def export_in_child(model_dir: Path, name: str, timeout: float = 1800.0) -> Path:
    """:func:`cached_export` run by a child Python process; its directory.

    torch and the model are loaded in the child only, so a process that wants
    nothing but the ONNX session (the server) never holds them in memory: the
    export costs it no resident memory and no import time. Raises
    :class:`ExportError` with the child's last line when the export fails.
    """
    command = [sys.executable, "-m", "binsearch.encoder.onnx_runtime", str(model_dir), name]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise ExportError(f"the ONNX export took more than {timeout:.0f}s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise ExportError(lines[-1] if lines else f"the export exited with {done.returncode}")
    found = find_export(model_dir, name)
    if found is None:
        raise ExportError("the export finished but left no export in the cache")
    return found


def _main(argv: list[str]) -> None:
    """``python -m binsearch.encoder.onnx_runtime MODEL_DIR NAME``: export into the cache."""
    model_dir, name = Path(argv[0]), argv[1]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    def load() -> Any:
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(model_dir), device="cpu")

    print(cached_export(model_dir, name, load))


def cached_export(model_dir: Path, name: str, load_torch: Callable[[], Any]) -> Path:
    """The directory of ``model_dir``'s verified export, exporting it first if missing.

    ``load_torch`` returns the loaded ``SentenceTransformer`` (called only to
    export). Concurrent exporters are safe: each writes a private temporary
    directory and renames it into place; the first rename wins.
    """
    target = export_dir(model_dir, name)
    if (target / "meta.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    scratch.chmod(0o755)  # mkdtemp's 0o700 would hide the export from other users of the cache
    try:
        export_onnx(load_torch(), scratch)
        try:
            scratch.rename(target)
        except OSError:  # another process finished first: use its copy
            if not (target / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def export_onnx(model: Any, out_dir: Path) -> None:
    """Trace ``model`` (a ``SentenceTransformer``) to ``out_dir``, then verify it.

    Writes ``model.onnx`` (inputs int64 ``(batch, seq)``: the tokenizer's ids
    and mask; output float32 ``(batch, dim)`` of unit rows), the tokenizer
    files and ``meta.json``. Raises :class:`ExportError` when the export
    cannot be made or does not reproduce ``model``'s embeddings.
    """
    import torch

    features = _tokenize(model, _PROBES[:2])
    names = [n for n in _INPUT_NAMES if n in features]
    if "input_ids" not in names or "attention_mask" not in names:
        raise ExportError(f"unsupported model inputs {sorted(features)}")
    max_length = int(model.max_seq_length or model.tokenizer.model_max_length)

    class Normalized(torch.nn.Module):
        """The whole sentence-transformers pipeline plus L2 normalisation."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            out = self.model(dict(zip(names, inputs, strict=True)))["sentence_embedding"]
            return torch.nn.functional.normalize(out, p=2, dim=1)

    wrapper = Normalized().eval()
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"embedding": {0: "batch"}}
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        # the tracer warns about Python branches on shapes; _verify checks the result instead
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                tuple(features[n] for n in names),
                str(out_dir / "model.onnx"),
                input_names=names,
                output_names=["embedding"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,  # the TorchScript exporter: seconds, no onnxscript needed
            )
        model.tokenizer.save_pretrained(str(out_dir))
    except Exception as exc:  # any exporter failure means "no fast path", said in one line
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    tokenizer = model.tokenizer
    meta = {"format": EXPORT_FORMAT, "inputs": names, "max_length": max_length}
    meta |= {"pad_id": int(tokenizer.pad_token_id), "pad_token": str(tokenizer.pad_token)}
    meta["padding_side"] = str(getattr(tokenizer, "padding_side", "right"))
    meta["dim"] = int(model.encode(["x"], convert_to_numpy=True, show_progress_bar=False).shape[1])
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    _verify(model, OnnxEncoder(out_dir, threads=1))


def _tokenize(model: Any, texts: list[str]) -> dict[str, Any]:
    """The model's own features for ``texts`` (``preprocess`` from sentence-transformers 6 on)."""
    return (getattr(model, "preprocess", None) or model.tokenize)(texts)


def _verify(model: Any, onnx_encoder: OnnxEncoder) -> None:
    """Raise :class:`ExportError` unless ``onnx_encoder`` reproduces ``model`` on the probes."""
    reference = _tokenize(model, _PROBES)
    ours = onnx_encoder.tokenize(_PROBES)
    if not np.array_equal(reference["input_ids"].numpy(), ours["input_ids"]):
        raise ExportError("the exported tokenizer does not reproduce the model's token ids")
    expected = model.encode(
        _PROBES, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
    )
    cosine = float(np.min(np.sum(expected * onnx_encoder.encode(_PROBES), axis=1)))
    if cosine < VERIFY_COSINE:
        raise ExportError(f"exported model differs from torch (cosine {cosine:.6f})")


class OnnxEncoder:
    """An exported model on ONNX Runtime's CPU provider.

    ``threads`` defaults to the CPUs this process may use. Spinning worker
    threads are off: between requests a service's other threads (the scan)
    need the cores more than a few microseconds of wake-up latency.

    ``lanes`` > 1 splits each call of several texts into up to ``lanes`` parts
    run side by side, each on its own thread, the session on ``threads //
    lanes`` threads: coarse-grained parallelism, no barrier per operation
    (which, for query-sized inputs, costs more than the operations). Default
    ``$BINSEARCH_ONNX_LANES``, else 1.
    """

    def __init__(
        self, directory: Path, threads: int | None = None, lanes: int | None = None
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer  # not transformers: that imports torch (seconds)

        meta = json.loads((directory / "meta.json").read_text())
        self.directory = directory
        self.inputs: list[str] = meta["inputs"]
        self.max_length: int = meta["max_length"]
        self.dim: int = meta["dim"]
        # settings fixed here, never per call: a tokenizer mutated while another
        # thread encodes raises "Already borrowed"; an unchanging one is shared safely
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.enable_padding(
            direction=meta["padding_side"], pad_id=meta["pad_id"], pad_token=meta["pad_token"]
        )
        threads = threads or len(os.sched_getaffinity(0))
        self.lanes = max(1, min(lanes or int(os.environ.get(LANES_ENV) or 1), threads))
        self._pool = None
        if self.lanes > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.lanes - 1, thread_name_prefix="onnx-lane")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads // self.lanes)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(directory / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Token arrays int64 ``(len(texts), padded length)`` for the model's inputs."""
        encoded = self.tokenizer.encode_batch(list(texts))
        fields = {
            "input_ids": "ids",
            "attention_mask": "attention_mask",
            "token_type_ids": "type_ids",
        }
        return {
            n: np.array([getattr(e, fields[n]) for e in encoded], np.int64) for n in self.inputs
        }

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed ``texts``: float32 ``(len(texts), dim)``, rows of unit length.

        Texts are batched longest first, as sentence-transformers does, so a
        batch pads to lengths close to its own.
        """
        from tqdm.auto import tqdm

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="Batches", disable=not progress):
            rows = order[start : start + batch_size]
            if self._pool is not None and len(rows) > 1:
                parts = np.array_split(rows, min(self.lanes, len(rows)))
                futures = [self._pool.submit(self._run, texts, p) for p in parts[1:]]
                out[parts[0]] = self._run(texts, parts[0])  # this thread is a lane too
                for part, future in zip(parts[1:], futures, strict=True):
                    out[part] = future.result()
            else:
                out[rows] = self._run(texts, rows)
        return out

    def _run(self, texts: list[str], rows: np.ndarray) -> np.ndarray:
        return self.session.run(None, self.tokenize([texts[i] for i in rows]))[0]


if __name__ == "__main__":
    try:
        _main(sys.argv[1:])
    except Exception as exc:  # one line for the parent's ExportError
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
