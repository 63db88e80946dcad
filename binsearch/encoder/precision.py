"""Which arithmetic the encoder's torch path runs in: measured once per machine, cached.

A *precision* is the arithmetic of an encoder path:

========  =============================================================================
``fp32``  the model as loaded (float32 weights and activations): the reference
``bf16``  the whole model cast to bfloat16 (weights and activations); on a CPU with
          AMX-BF16 or AVX512-BF16, oneDNN's bf16 GEMMs; elsewhere torch emulates it
          (slowly). Embeddings are normalised in float32.
``int8``  torch's dynamic int8 quantization of every ``Linear`` (weights per output
          channel, activations per batch), fbgemm's VNNI kernels on x86
``mixed`` int8 on the ``Linear`` layers that tolerate it, measured one by one on the
          probe texts, bf16 (or fp32 where bf16 is not faithful) elsewhere
          (:mod:`binsearch.encoder.mixed`)
========  =============================================================================

``auto`` (the :class:`Encoder` default) asks a :class:`PrecisionChooser`, which
measures the candidates once per (machine, model, library versions) on bundled
probe texts and keeps the fastest one that is *faithful*: its embeddings of the
probe texts have mean cosine >= :data:`MEAN_COSINE` and minimum cosine >=
:data:`MIN_COSINE` to fp32's. A lower precision must also be at least
:data:`MIN_SPEEDUP` times as fast as fp32, so that noise never trades fidelity
for nothing. The choice is kept in ``precision.json`` beside the scan kernels'
choices, in ``$BINSEARCH_PRECISION_CACHE`` if set (empty or ``off``: memory only),
else ``$BINSEARCH_CACHE/precision.json`` (default ``~/.cache/binsearch``).

Measuring costs a few seconds of CPU once (the probe texts encoded three times
per eligible candidate, torch on one thread meanwhile); it runs on the first
bulk (torch) call, never for the ONNX Runtime query path, so ``binsearch
serve`` starts no slower.

``mixed`` costs a layer-by-layer measurement (one encoding of the probe texts
per ``Linear``), so the chooser measures it only where it can pay: when whole-model
int8 ran faster than the base (bf16 or fp32) on its first run. Its plan (the
int8 layers) is kept with the choice.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.durable import update_json_file

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "int8", "mixed")
#: What ``auto`` measures, in order of preference at equal speed.
CANDIDATES = ("fp32", "bf16", "int8", "mixed")
#: The fidelity bar: mean and minimum cosine of a path's probe embeddings to fp32's.
MEAN_COSINE = 0.999
MIN_COSINE = 0.995
#: A lower precision is chosen only when at least this much faster than fp32.
MIN_SPEEDUP = 1.1
#: Part of the cache key: bumped when :func:`measure_precisions` changes.
MEASURE_VERSION = 2
PRECISION_ENV = "BINSEARCH_ENCODER_PRECISION"
CACHE_ENV = "BINSEARCH_PRECISION_CACHE"
_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "cranfield"
_FALLBACK_PROBES = [
    "What is the effect of vitamin D on bone density?",
    "Binary codes make semantic search cheap.",
    "lift of a wing in a propeller slipstream",
    " ".join(["Long documents are truncated at the model's maximum sequence length."] * 30),
]


class PrecisionError(ValueError):
    """A precision name that does not exist, or one that cannot run here."""


def check_precision(value: str | None) -> str:
    """``value`` (or ``$BINSEARCH_ENCODER_PRECISION``, else ``auto``) if it is a precision."""
    value = value or os.environ.get(PRECISION_ENV) or "auto"
    if value not in PRECISIONS:
        raise PrecisionError(
            f"encoder precision must be one of {', '.join(PRECISIONS)}, got {value!r}"
        )
    return value


def to_precision(
    model: Any, precision: str, layers: Sequence[str] | None = None, base: str = "bf16"
) -> Any:
    """A copy of the ``SentenceTransformer`` ``model`` that runs in ``precision``.

    ``fp32`` returns ``model`` itself. ``mixed`` puts ``layers`` in int8 and the
    rest in ``base``; without ``layers`` they are measured now on the probe texts
    (:func:`mixed_plan`). Raises :class:`PrecisionError` when this torch cannot
    build the path (e.g. int8 off the CPU or without a quantized engine).
    """
    import torch

    if precision == "fp32":
        return model
    if precision == "bf16":
        return copy.deepcopy(model).to(torch.bfloat16)
    if precision in ("int8", "mixed"):
        device = next(model.parameters()).device
        if device.type != "cpu":
            raise PrecisionError(f"{precision} runs on the CPU only, not {device}")
        engines = torch.backends.quantized.supported_engines
        if not any(e in engines for e in ("x86", "fbgemm", "onednn", "qnnpack")):
            raise PrecisionError(f"this torch has no quantized engine ({engines})")
    if precision == "mixed":
        from binsearch.encoder.mixed import build_mixed

        if layers is None:
            layers = mixed_plan(model, probe_texts(), base)
        return build_mixed(model, layers, base)
    if precision == "int8":
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices
            warnings.simplefilter("ignore")
            return quantize_dynamic(
                copy.deepcopy(model), {torch.nn.Linear: per_channel_dynamic_qconfig}
            )
    raise PrecisionError(f"no such precision {precision!r}")


def mixed_plan(
    model: Any, texts: Sequence[str], base: str = "bf16", reference: np.ndarray | None = None
) -> list[str]:
    """The ``Linear`` layers a mixed model of ``model`` runs in int8: each layer's
    sensitivity measured on ``texts`` (:func:`binsearch.encoder.mixed.sensitivities`),
    the least sensitive within the budget (:func:`binsearch.encoder.mixed.plan`)."""
    from binsearch.encoder.mixed import plan, sensitivities

    return plan(sensitivities(model, texts, encode_normalized, base, reference))


def encode_normalized(
    model: Any, texts: Sequence[str], batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    """``model``'s embeddings of ``texts``, float32 unit rows, whatever the model's dtype."""
    import torch

    with torch.inference_mode():
        out = model.encode(
            list(texts),
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_tensor=True,
        )
        out = torch.nn.functional.normalize(out.float(), p=2, dim=1)
    return np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32)


def probe_texts() -> list[str]:
    """The texts a measurement encodes: the 12 longest bundled Cranfield documents (past
    the 256-token limit, as bulk abstracts are) and 12 of its queries, or a built-in few."""
    try:
        docs = [json.loads(line) for line in (_SAMPLE / "corpus.jsonl").open()]
        queries = [json.loads(line) for line in (_SAMPLE / "queries.jsonl").open()]
    except (OSError, ValueError):
        return list(_FALLBACK_PROBES)
    texts = [f"{d.get('title', '')} {d.get('text', '')}".strip() for d in docs]
    longest = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i))[:8]
    return [texts[i] for i in longest] + [str(q["text"]) for q in queries[:8]]


@dataclass
class Measurement:
    """One candidate on the probe texts.

    ``cpu_s``: median CPU seconds to encode them (None when not timed: below the
    bar, unavailable, or more than twice as slow as fp32 on its first run);
    ``cosine_mean``/``cosine_min``: to fp32's embeddings; ``eligible``: passes
    the fidelity bar; ``note``: why it was not timed or not eligible;
    ``layers``: for ``mixed``, the layers in int8 (its plan).
    """

    precision: str
    cpu_s: float | None
    cosine_mean: float
    cosine_min: float
    eligible: bool
    note: str = ""
    layers: list[str] | None = None


@dataclass
class Choice:
    """The precision ``auto`` runs, with the measurements that chose it."""

    precision: str
    reason: str
    measurements: list[Measurement]

    @property
    def layers(self) -> list[str] | None:
        """The chosen precision's int8 layers (``mixed``), else None."""
        for m in self.measurements:
            if m.precision == self.precision:
                return m.layers
        return None


def faithful(cosines: np.ndarray, mean: float = MEAN_COSINE, minimum: float = MIN_COSINE) -> bool:
    """Whether per-text cosines to fp32 pass the fidelity bar."""
    return bool(cosines.size) and float(cosines.mean()) >= mean and float(cosines.min()) >= minimum


def measure_precisions(
    model: Any,
    texts: Sequence[str],
    candidates: Sequence[str] = CANDIDATES,
    rounds: int = 3,
    clock: Callable[[], float] = time.thread_time,
) -> list[Measurement]:
    """Fidelity and speed of each candidate precision of ``model`` on ``texts``.

    Each candidate is built, warmed up, and checked against fp32 first; only the
    faithful ones that are not plainly slower (at most twice fp32's first time)
    are timed: ``rounds`` interleaved runs (order alternating), medians of
    the calling thread's CPU time with torch on one thread for the while: robust
    to other processes taking the cores, and free of OpenMP's spin-waiting, which
    a CPU time of several threads would count. Precisions speed up the GEMMs,
    which scale with threads alike, so one thread ranks them as two would.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(model, texts, candidates, rounds, clock)
    finally:
        torch.set_num_threads(threads)


def _measure(
    model: Any,
    texts: Sequence[str],
    candidates: Sequence[str],
    rounds: int,
    clock: Callable[[], float],
) -> list[Measurement]:
    encode = encode_normalized
    encode(model, texts[:2])
    start = clock()
    reference = encode(model, texts)
    first_fp32 = clock() - start
    results = {"fp32": Measurement("fp32", None, 1.0, 1.0, True)}
    timed: dict[str, Any] = {"fp32": model}
    firsts = {"fp32": first_fp32}
    for name in candidates:
        if name == "fp32":
            continue
        layers = None
        if name == "mixed":
            bf16 = results.get("bf16")
            base = "bf16" if bf16 is not None and bf16.eligible else "fp32"
            if not firsts.get("int8", float("inf")) < firsts.get(base, 0.0):
                note = f"not measured: int8 ran no faster than {base} (first runs)"
                results[name] = Measurement(name, None, 0.0, 0.0, False, note)
                continue
        try:
            if name == "mixed":
                from binsearch.encoder.mixed import build_mixed

                layers = mixed_plan(model, texts, base, reference)
                built = build_mixed(model, layers, base)
            else:
                built = to_precision(model, name)
            encode(built, texts[:2])
            start = clock()
            emb = encode(built, texts)
            firsts[name] = first = clock() - start
        except Exception as exc:  # a path this torch or CPU cannot run is no candidate
            results[name] = Measurement(name, None, 0.0, 0.0, False, f"unavailable: {exc}")
            continue
        cos = np.sum(emb * reference, axis=1)
        ok = faithful(cos)
        note = "" if ok else "below the fidelity bar"
        if ok and first > 2 * first_fp32:
            note = f"not timed: first run {first / first_fp32:.1f}x fp32's time"
        elif ok:
            timed[name] = built
        results[name] = Measurement(
            name, None, float(cos.mean()), float(cos.min()), ok, note, layers
        )
    times: dict[str, list[float]] = {name: [] for name in timed}
    names = list(timed)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = clock()
            encode(timed[name], texts)
            times[name].append(clock() - start)
    for name, values in times.items():
        results[name].cpu_s = float(np.median(values))
    return [results[name] for name in candidates if name in results]


def pick(measurements: Sequence[Measurement], min_speedup: float = MIN_SPEEDUP) -> Choice:
    """The fastest eligible, timed measurement; a lower precision must beat fp32 by
    ``min_speedup``. fp32 when nothing else qualifies (or fp32 was not timed)."""
    by_name = {m.precision: m for m in measurements}
    base = by_name.get("fp32")
    if base is None or base.cpu_s is None or base.cpu_s <= 0:
        return Choice("fp32", "fp32 not measured", list(measurements))
    best, best_s = "fp32", base.cpu_s
    for m in measurements:
        if m.precision == "fp32" or not m.eligible or m.cpu_s is None:
            continue
        if base.cpu_s / m.cpu_s >= min_speedup and m.cpu_s < best_s:
            best, best_s = m.precision, m.cpu_s
    if best == "fp32":
        return Choice("fp32", "no faithful precision was faster", list(measurements))
    chosen = by_name[best]
    reason = (
        f"{base.cpu_s / best_s:.2f}x fp32's speed, cosine to fp32 mean "
        f"{chosen.cosine_mean:.5f} min {chosen.cosine_min:.5f}"
    )
    return Choice(best, reason, list(measurements))


def machine_signature() -> str:
    """CPU model and feature flags, torch's CPU capability and the library versions, hashed."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:
        from llvmlite import binding

        cpu = f"{binding.get_host_cpu_name()}|{binding.get_host_cpu_features().flatten()}"
    except Exception:  # no llvmlite: the CPU model line is the next best thing
        cpu = _cpuinfo_model()
    versions = []
    for package in ("sentence-transformers", "transformers"):
        try:
            versions.append(version(package))
        except PackageNotFoundError:
            versions.append("-")
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
    text = "|".join(
        [platform.machine(), cpu, torch.__version__, capability, *versions, str(MEASURE_VERSION)]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cpuinfo_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()


def model_key(name: str, model_dir: Path) -> str:
    """The model's name and a hash of its files (name, size, mtime): a rewritten model
    directory is measured again."""
    h = hashlib.sha256(str(model_dir.resolve()).encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        stat = path.stat()
        h.update(f"{path.relative_to(model_dir)} {stat.st_size} {stat.st_mtime_ns}".encode())
    return f"{name}-{h.hexdigest()[:12]}"


def default_cache_file() -> Path | None:
    """``$BINSEARCH_PRECISION_CACHE`` (empty/off: None), else ``<cache root>/precision.json``."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    from binsearch.encoder.onnx_runtime import cache_root

    return cache_root() / "precision.json"


class PrecisionChooser:
    """Measured precision choices per (machine, model), optionally kept on disk.

    Args:
        cache_file: JSON file of choices, read at the first :meth:`choose` and
            extended after each measurement; ``None`` keeps them in memory only.
            A file that cannot be read is ignored with one warning (and
            replaced on the next write).
        measure: ``(model, texts) -> list[Measurement]``; tests inject a fake.
        signature: ``() -> str``, the machine's part of the key.
        texts: the probe texts (default :func:`probe_texts`).

    Holds no process-global state: each encoder may have its own. Thread-safe:
    concurrent first calls wait for one measurement.
    """

    def __init__(
        self,
        cache_file: str | os.PathLike[str] | None = None,
        measure: Callable[[Any, Sequence[str]], list[Measurement]] | None = None,
        signature: Callable[[], str] = machine_signature,
        texts: Sequence[str] | None = None,
    ) -> None:
        self.cache_file = None if cache_file is None else Path(cache_file)
        self._measure = measure or measure_precisions
        self._signature = signature
        self._texts = texts
        self.choices: dict[str, Choice] = {}
        self.measured = 0  # how many measurements this chooser ran (not read from disk)
        self._lock = threading.Lock()
        self._loaded = False

    def key(self, name: str, model_dir: Path) -> str:
        """The cache key: machine signature and model key."""
        return f"{self._signature()}/{model_key(name, model_dir)}"

    def known(self, name: str, model_dir: Path) -> Choice | None:
        """The choice for this model if already measured or cached, else None."""
        with self._lock:
            self._load()
            return self.choices.get(self.key(name, model_dir))

    def choose(self, name: str, model_dir: Path, model: Any) -> Choice:
        """The precision to run ``model`` (loaded from ``model_dir``) in; measured on first use."""
        key = self.key(name, model_dir)
        with self._lock:
            self._load()
            hit = self.choices.get(key)
            if hit is not None:
                return hit
            texts = list(self._texts) if self._texts is not None else probe_texts()
            start = time.perf_counter()
            choice = pick(self._measure(model, texts))
            self.measured += 1
            logger.info(
                "encoder %s: precision %s (%s; measured in %.1f s)",
                name,
                choice.precision,
                choice.reason,
                time.perf_counter() - start,
            )
            self.choices[key] = choice
            self._write(key, choice)
            return choice

    def _load(self) -> None:
        if self._loaded or self.cache_file is None:
            self._loaded = True
            return
        self._loaded = True
        data = self._read()
        for key, entry in data.items():
            try:
                measurements = [Measurement(**m) for m in entry.get("measurements", [])]
                precision = entry["precision"]
                if precision not in CANDIDATES:
                    raise ValueError(f"unknown precision {precision!r}")
                self.choices[key] = Choice(precision, str(entry.get("reason", "")), measurements)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                logger.warning(
                    "precision cache %s: entry %s ignored (%s)", self.cache_file, key, exc
                )

    def _read(self) -> dict[str, Any]:
        assert self.cache_file is not None
        try:
            data = json.loads(self.cache_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning(
                "precision cache %s unreadable, measuring again (%s)", self.cache_file, exc
            )
            return {}
        if not isinstance(data, dict):
            logger.warning(
                "precision cache %s is not a JSON object, measuring again", self.cache_file
            )
            return {}
        return data

    def _write(self, key: str, choice: Choice) -> None:
        if self.cache_file is None:
            return
        entry = asdict(choice) | {"cpu": _cpuinfo_model()[:120]}
        try:
            update_json_file(self.cache_file, lambda data: data.__setitem__(key, entry))
        except OSError as exc:  # a read-only home must not stop encoding
            logger.warning("precision choice not cached in %s: %s", self.cache_file, exc)
