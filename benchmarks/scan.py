"""Scan speed against the machine's memory bandwidth and faiss, measured in one run.

    python benchmarks/scan.py --quick      # N = 1M only, under 2 minutes
    python benchmarks/scan.py              # adds N = 10M and the memory check (< 20 minutes)
    python benchmarks/scan.py --batch      # batch kernels vs faiss and today's (scan_batch.py)

Every figure is the median of ``--reps`` (>= 5) repetitions, and everything a
ratio compares is measured interleaved inside the same repetition: the
bandwidth limit (a numba streaming read of the very bytes the scan reads, with
1 and 2 threads), our scan, ``faiss.IndexBinaryFlat`` with 1 and 2 threads (its
best is the baseline) and ``faiss.IndexFlatIP`` as the float reference. Shared,
loaded machines make absolute numbers noisy; the ratios are the result.

Writes ``results/scan/scan.json`` and ``results/scan/scan.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# Idle OpenMP threads (faiss's libgomp) must sleep, not spin, or they steal the
# cores our scan and the other process's threads need; see docs/index.md.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402
from common import cpu_name, median, random_codes, timed  # noqa: E402
from numba import njit, prange  # noqa: E402

from index import BinaryIndex, pack_codes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@njit(cache=True, parallel=True, nogil=True)
def stream_read(words: np.ndarray, chunks: int) -> np.ndarray:
    """Sum of every uint64 of ``words`` (1-d), split into ``chunks`` thread chunks.

    Four independent accumulators, 4 words per step: LLVM turns it into AVX2
    loads and adds with no dependency chain, so the loop waits on memory only.
    """
    n = words.shape[0]
    step = (n + chunks - 1) // chunks
    sums = np.zeros(chunks, dtype=np.uint64)
    for c in prange(chunks):
        lo = min(n, c * step)
        hi = min(n, lo + step)
        s0 = s1 = s2 = s3 = np.uint64(0)
        i = lo
        while i + 4 <= hi:
            s0 += words[i]
            s1 += words[i + 1]
            s2 += words[i + 2]
            s3 += words[i + 3]
            i += 4
        while i < hi:
            s0 += words[i]
            i += 1
        sums[c] = s0 + s1 + s2 + s3
    return sums


@njit(cache=True, parallel=True, nogil=True)
def stream_xor(words: np.ndarray, chunks: int) -> np.ndarray:
    """XOR of every uint64 of ``words``: the second read probe (see :func:`bandwidth_seconds`)."""
    n = words.shape[0]
    step = (n + chunks - 1) // chunks
    out = np.zeros(chunks, dtype=np.uint64)
    for c in prange(chunks):
        x = np.uint64(0)
        for i in range(min(n, c * step), min(n, (c + 1) * step)):
            x ^= words[i]
        out[c] = x
    return out


def bandwidth_seconds(words: np.ndarray, threads: int) -> float:
    """Time of the faster of two streaming reads of ``words`` with ``threads`` threads.

    The limit a scan of the same bytes can reach: the cheapest passes over
    them (a vectorised sum and an XOR reduction), each run twice, the best
    taken, so that one slow probe does not flatter the scan it is compared with.
    """
    numba.set_num_threads(threads)
    best = float("inf")
    for probe in (stream_read, stream_xor, stream_read, stream_xor):
        t = time.perf_counter()
        probe(words, threads)
        best = min(best, time.perf_counter() - t)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return best


def machine_bandwidth(reps: int, size_mb: int = 1024) -> dict:
    """The machine's streaming read in GB/s on a ``size_mb`` buffer (far beyond L3), 1 and 2 threads.

    Median over ``reps`` of :func:`bandwidth_seconds`: the figure to set
    against the issue's anchor and to read every per-array ``bw`` ratio by.
    """
    words = np.ones(size_mb * 2**20 // 8, dtype=np.uint64)
    stream_read(words, 1)
    stream_xor(words, 1)
    stream_xor(words, 1)
    out = {}
    for threads in (1, 2):
        times = [bandwidth_seconds(words, threads) for _ in range(reps)]
        out[f"bw{threads}"] = words.nbytes / median(times) / 1e9
    return out


def faiss_seconds(index, queries: np.ndarray, k: int, threads: int) -> float:
    faiss.omp_set_num_threads(threads)
    return timed(index.search, queries, k)


def bench_one_plane(
    rng, n: int, m: int, reps: int, n_single: int, batch: int | None, asymmetric: bool
) -> dict:
    """Single queries (and optionally a batch) on 1-plane codes: ours, faiss, bandwidth."""
    n_words = m // 64
    codes = random_codes(rng, n, 1, n_words)
    index = BinaryIndex(m, 1, "fixed", "ip")
    index.add(codes, np.arange(n, dtype=np.int64))
    as_bytes = codes.reshape(n, -1).view(np.uint8)
    flat = faiss.IndexBinaryFlat(m)
    flat.add(as_bytes)
    del as_bytes
    words = index.codes.reshape(-1)
    nbytes = words.nbytes
    queries = random_codes(rng, max(n_single, batch or 0), 1, n_words)
    fq = queries.reshape(len(queries), -1).view(np.uint8)
    # warm-up: compile (cached) and fault pages in; not timed
    stream_read(words, 1)
    stream_xor(words, 1)
    index.search(queries[:1], 10)
    index.search(queries[:2], 10)
    flat.search(fq[:1], 10)
    keys = ["bw1", "bw2", "ours1", "ours2", "faiss1", "faiss2"]
    if asymmetric:
        keys += ["asym_slices", "asym_tables", "asym_fastscan"]
        floats = rng.standard_normal((n_single, m)).astype(np.float32)
        for method in ("slices", "tables", "fastscan"):
            index.search_float(floats[:1], 10, method=method)
    rows: dict[str, list[float]] = {key: [] for key in keys}
    batch_rows: dict[str, list[float]] = {"ours": [], "faiss1": [], "faiss2": []}
    for _ in range(reps):
        rows["bw1"].append(bandwidth_seconds(words, 1))
        rows["bw2"].append(bandwidth_seconds(words, 2))
        for threads in (1, 2):
            ts = [
                timed(index.search, queries[j : j + 1], 10, threads=threads)
                for j in range(n_single)
            ]
            rows[f"ours{threads}"].append(median(ts))
            ts = [faiss_seconds(flat, fq[j : j + 1], 10, threads) for j in range(n_single)]
            rows[f"faiss{threads}"].append(median(ts))
        if asymmetric:
            for method in ("slices", "tables", "fastscan"):
                ts = [
                    timed(index.search_float, floats[j : j + 1], 10, method=method)
                    for j in range(n_single)
                ]
                rows[f"asym_{method}"].append(median(ts))
        if batch:
            batch_rows["ours"].append(timed(index.search, queries[:batch], 10))
            batch_rows["faiss1"].append(faiss_seconds(flat, fq[:batch], 10, 1))
            batch_rows["faiss2"].append(faiss_seconds(flat, fq[:batch], 10, 2))
    faiss.omp_set_num_threads(numba.config.NUMBA_NUM_THREADS)
    gbs = {key: nbytes / median(v) / 1e9 for key, v in rows.items()}
    ours = max(gbs["ours1"], gbs["ours2"])
    result = {
        "n": n,
        "m": m,
        "bytes": nbytes,
        "GB/s": gbs,
        "ms": {key: 1e3 * median(v) for key, v in rows.items()},
        "ours_best_threads": 1 if gbs["ours1"] > gbs["ours2"] else 2,
        "ratio_to_bandwidth_2t": gbs["ours2"] / gbs["bw2"],
        "ratio_best_to_bandwidth_2t": ours / gbs["bw2"],
        "ratio_to_faiss_best": ours / max(gbs["faiss1"], gbs["faiss2"]),
        "faiss_ratio_to_bandwidth_2t": max(gbs["faiss1"], gbs["faiss2"]) / gbs["bw2"],
    }
    if asymmetric:
        result["asymmetric_speed_vs_symmetric"] = {
            method: gbs[f"asym_{method}"] / ours for method in ("slices", "tables", "fastscan")
        }
    if batch:
        ms = {key: 1e3 * median(v) for key, v in batch_rows.items()}
        result["batch"] = {
            "queries": batch,
            "ms": ms,
            "ratio_to_faiss_best": min(ms["faiss1"], ms["faiss2"]) / ms["ours"],
        }
    return result


def bench_multi_plane(rng, n: int, m: int, planes: int, reps: int, n_single: int, cascade: int):
    """Single queries on multi-plane codes with per-document scales, full and cascade."""
    n_words = (m + 63) // 64
    codes = random_codes(rng, n, planes, n_words)
    if m % 64:
        codes[:, :, -1] &= np.uint64((1 << (m % 64)) - 1)
    scales = (rng.random((n, planes)) * 0.5 + 0.5).astype(np.float32)
    scales[:, 0] += 2
    index = BinaryIndex(m, planes, "per_document", "cosine")
    index.add(codes, np.arange(n, dtype=np.int64), scales)
    del codes, scales
    gc.collect()
    words = index.codes.reshape(-1)
    nbytes = words.nbytes + index.scales.nbytes
    queries = random_codes(rng, n_single, planes, n_words)
    qw = np.tile((rng.random(planes) + 0.5).astype(np.float32), (n_single, 1))
    # BEBR's fixed query weights 2**-p: fast-scan tables are exact for them
    pw = np.tile(BinaryIndex(m, planes).plane_weights, (n_single, 1))
    stream_read(words, 1)
    stream_xor(words, 1)
    index.search(queries[:1], 10, qw[:1], method="popcount")
    index.search(queries[:1], 10, qw[:1], cascade=cascade)
    index.search(queries[:1], 10, qw[:1], method="sdc")
    index.search(queries[:1], 10, pw[:1], method="sdc")
    index.search(queries[:1], 10, pw[:1])
    runs = {
        "full": ("popcount", qw),
        "sdc": ("sdc", qw),
        "sdc_exact": ("sdc", pw),
        "exact": ("exact", pw),
    }
    rows: dict[str, list[float]] = {key: [] for key in ["bw2", "cascade", *runs]}
    for _ in range(reps):
        rows["bw2"].append(bandwidth_seconds(words, 2) * nbytes / words.nbytes)
        for key, (method, weights) in runs.items():
            rows[key].append(
                median(
                    [
                        timed(
                            index.search, queries[j : j + 1], 10, weights[j : j + 1], method=method
                        )
                        for j in range(n_single)
                    ]
                )
            )
        rows["cascade"].append(
            median(
                [
                    timed(index.search, queries[j : j + 1], 10, qw[j : j + 1], cascade=cascade)
                    for j in range(n_single)
                ]
            )
        )
    ms = {key: 1e3 * median(v) for key, v in rows.items()}
    return {
        "sdc_speed_vs_popcount": ms["full"] / ms["sdc"],
        "sdc_exact_speed_vs_popcount": ms["full"] / ms["sdc_exact"],
        "sdc_exact_ratio_to_bandwidth_2t": ms["bw2"] / ms["sdc_exact"],
        "exact_ratio_to_bandwidth_2t": ms["bw2"] / ms["exact"],
        "n": n,
        "m": m,
        "planes": planes,
        "bytes": nbytes,
        "ms": ms,
        "GB/s": {key: nbytes / v / 1e6 for key, v in ms.items()},
        "ratio_to_bandwidth_2t": ms["bw2"] / ms["full"],
        "cascade": cascade,
        "cascade_speedup": ms["full"] / ms["cascade"],
    }


def bench_float(rng, n: int, d: int, reps: int, n_single: int, batch: int) -> dict:
    """faiss.IndexFlatIP (float32) against our scan of 1-plane ``d``-bit codes, same N."""
    x = rng.standard_normal((n, d), dtype=np.float32)
    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    del x
    q = rng.standard_normal((batch, d), dtype=np.float32)
    binary = BinaryIndex(d, 1, "fixed", "ip")
    binary.add(random_codes(rng, n, 1, (d + 63) // 64), np.arange(n, dtype=np.int64))
    bq = random_codes(rng, batch, 1, (d + 63) // 64)
    flat.search(q[:1], 10)
    binary.search(bq[:1], 10)
    binary.search(bq[:2], 10)
    rows: dict[str, list[float]] = {
        "float_single": [],
        "float_batch": [],
        "ours_single": [],
        "ours_batch": [],
    }
    faiss.omp_set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for _ in range(reps):
        rows["float_single"].append(
            median([timed(flat.search, q[j : j + 1], 10) for j in range(n_single)])
        )
        rows["ours_single"].append(
            median([timed(binary.search, bq[j : j + 1], 10) for j in range(n_single)])
        )
        rows["float_batch"].append(timed(flat.search, q, 10))
        rows["ours_batch"].append(timed(binary.search, bq, 10))
    ms = {key: 1e3 * median(v) for key, v in rows.items()}
    return {
        "n": n,
        "d": d,
        "batch": batch,
        "ms": ms,
        "speedup_single": ms["float_single"] / ms["ours_single"],
        "speedup_batch": ms["float_batch"] / ms["ours_batch"],
    }


def cascade_recall(data: Path, planes: int, factors: list[int]) -> dict | None:
    """Recall of cascade search against the full multi-plane scan, on SciFact embeddings."""
    emb = data / "scifact" / "embeddings" / "all-MiniLM-L6-v2"
    if not (emb / "corpus.npy").is_file():
        return None
    from binsearch.codes.codecs import make_codec  # benchmarks may import everything

    docs = np.load(emb / "corpus.npy")
    queries = np.load(emb / "queries.npy")
    codec = make_codec("residual", docs.shape[1], planes)
    dc = codec.encode(docs)
    qc = codec.encode(queries)
    index = BinaryIndex(codec.m, planes, codec.scaling, "cosine")
    index.add(dc.words, np.arange(len(docs)), dc.scales)
    _, full = index.search(qc.words, 10, qc.scales)
    out = {"dataset": "scifact", "model": "all-MiniLM-L6-v2", "planes": planes, "recall@10": {}}
    for c in factors:
        _, got = index.search(qc.words, 10, qc.scales, cascade=c)
        hits = [len(set(a) & set(b)) for a, b in zip(full.tolist(), got.tolist(), strict=True)]
        out["recall@10"][str(c)] = float(np.mean(hits) / 10)
    return out


def bench_query_planes(rng, n: int, reps: int, n_single: int) -> list[dict]:
    """``search(method="fast")`` against popcount for queries of more planes than documents.

    2 x 384-bit documents with per-document scales; queries of 2 and 8 residual
    planes with weights off the power-of-two grid (an ``rbe`` codec writes 8):
    fast-scan folds every query plane into one table, popcount pays per pair.
    """
    m, planes = 384, 2
    codes = random_codes(rng, n, planes, m // 64)
    scales = (rng.random((n, planes)) + 0.5).astype(np.float32)
    index = BinaryIndex(m, planes, "per_document", "cosine")
    index.add(codes, np.arange(n, dtype=np.int64), scales)
    del codes, scales
    out = []
    for query_planes in (2, 8):
        queries = random_codes(rng, n_single, query_planes, m // 64)
        qw = (rng.random((n_single, query_planes)) + 0.5) * np.exp2(-np.arange(query_planes))
        qw = qw.astype(np.float32)
        for method in ("popcount", "fast"):
            index.search(queries[:1], 10, qw[:1], method=method)
        rows: dict[str, list[float]] = {"popcount": [], "fast": []}
        for _ in range(reps):
            for method in rows:
                rows[method].append(
                    median(
                        [
                            timed(
                                index.search, queries[j : j + 1], 10, qw[j : j + 1], method=method
                            )
                            for j in range(n_single)
                        ]
                    )
                )
        ms = {key: 1e3 * median(v) for key, v in rows.items()}
        out.append(
            {
                "n": n,
                "shape": f"{planes} x {m}",
                "query_planes": query_planes,
                "ms": ms,
                "speedup": ms["popcount"] / ms["fast"],
            }
        )
    return out


def fast_agreement(data: Path, k: int = 100) -> dict | None:
    """Identical top-k lists of ``method="fast"`` forced to quantized fast-scan and popcount.

    SciFact and Cranfield MiniLM embeddings, residual 2-plane codes and an
    (untrained) ``rbe`` 2-plane binarizer with 8 query planes; fast-scan is
    forced (``method="sdc"``) since these corpora are too small for the kernel
    chooser to pick it.
    """
    from binsearch.codes.binarizer import RecurrentBinarizer  # benchmarks may import everything
    from binsearch.codes.codecs import RbeCodec, make_codec
    from binsearch.collection.coded_index import CodedIndex

    sets = {
        "scifact": data / "scifact" / "embeddings" / "all-MiniLM-L6-v2",
        "cranfield": REPO / "binsearch" / "data" / "cranfield" / "embeddings" / "all-MiniLM-L6-v2",
    }
    out: dict = {"k": k, "runs": []}
    for name, emb in sets.items():
        if not (emb / "corpus.npy").is_file():
            continue
        docs = np.load(emb / "corpus.npy").astype(np.float32)
        queries = np.load(emb / "queries.npy").astype(np.float32)
        codecs = {
            "residual 2": make_codec("residual", docs.shape[1], 2),
            "rbe 2 (8 query planes)": RbeCodec(RecurrentBinarizer(docs.shape[1], planes=2)),
        }
        for codec_name, codec in codecs.items():
            coded = CodedIndex.from_embeddings(docs, codec, progress=False)
            words, weights = coded.query_codes(queries)
            _, exact = coded.index.search(words, k, weights, method="popcount")
            _, fast = coded.index.search(words, k, weights, method="sdc")
            same = [np.array_equal(a, b) for a, b in zip(exact, fast, strict=True)]
            out["runs"].append(
                {
                    "dataset": name,
                    "codec": codec_name,
                    "queries": len(same),
                    "identical": int(np.sum(same)),
                }
            )
    return out if out["runs"] else None


def rescore_quality(data: Path, reps: int) -> dict | None:
    """nDCG@10 and time per query on SciFact: float, binary codes, binary + rescoring."""
    root = data / "scifact"
    emb = root / "embeddings" / "all-MiniLM-L6-v2"
    if not (emb / "corpus.npy").is_file():
        return None
    from binsearch.collection.corpus import read_qrels
    from binsearch.eval.metrics import ndcg_at_k
    from index.rescore import VectorStore, rescored_search

    docs = np.load(emb / "corpus.npy")
    queries = np.load(emb / "queries.npy")
    names = json.loads((emb / "ids.json").read_text())
    qrels = read_qrels(root)
    judged = [i for i, q in enumerate(names["query_ids"]) if q in qrels]
    queries = queries[judged]
    qnames = [names["query_ids"][i] for i in judged]
    corpus_ids = np.asarray(names["corpus_ids"])

    def ndcg(ids: np.ndarray) -> float:
        return float(
            np.mean(
                [
                    ndcg_at_k(list(corpus_ids[row]), qrels[q])
                    for row, q in zip(ids, qnames, strict=True)
                ]
            )
        )

    ids = np.arange(len(docs), dtype=np.int64)
    index = BinaryIndex(docs.shape[1], 1, "fixed", "cosine")
    index.add(pack_codes(docs[:, None, :]), ids)
    codes = pack_codes(queries[:, None, :])
    exact = faiss.IndexFlatIP(docs.shape[1])
    exact.add(docs)
    stores = {s: VectorStore(docs, ids, s) for s in ("float16", "int8")}
    runs = {
        "float (faiss IndexFlatIP)": lambda: exact.search(queries, 10)[1],
        "binary 384 bits": lambda: index.search(codes, 10)[1],
    }
    for storage, store in stores.items():
        for over in (4, 10):
            runs[f"binary + {storage} rescoring, oversample {over}"] = lambda st=store, o=over: (
                rescored_search(index, st, codes, queries, 10, o)[1]
            )
    out = {"dataset": "scifact", "model": "all-MiniLM-L6-v2", "queries": len(qnames), "runs": {}}
    for name, run in runs.items():
        run()
        ts = [timed(run) for _ in range(reps)]
        out["runs"][name] = {
            "ndcg@10": ndcg(run()),
            "ms_per_query": 1e3 * median(ts) / len(qnames),
        }
    out["store_bytes_per_vector"] = {s: st.data.nbytes // len(docs) for s, st in stores.items()}
    return out


def omp_probe(n: int) -> list[dict]:
    """faiss single-query speed with 2 threads in a fresh process, per OpenMP wait policy."""
    code = (
        "import time, numpy as np, faiss, numba\n"
        "from index import BinaryIndex\n"
        f"n = {n}\n"
        "x = np.random.default_rng(0).integers(0, 256, size=(n, 32), dtype=np.uint8)\n"
        "f = faiss.IndexBinaryFlat(256); f.add(x)\n"
        "i = BinaryIndex(256); i.add(x.view(np.uint64).reshape(n, 1, 4), np.arange(n))\n"
        "i.search(x[:1].view(np.uint64).reshape(1, 1, 4), 10)\n"
        "faiss.omp_set_num_threads(2)\n"
        "ts = []\n"
        "for _ in range(7):\n"
        "    i.search(x[:1].view(np.uint64).reshape(1, 1, 4), 10)\n"
        "    t = time.perf_counter(); f.search(x[:1], 10); ts.append(time.perf_counter() - t)\n"
        "print(n * 32 / np.median(ts) / 1e9, numba.threading_layer())\n"
    )
    out = []
    for policy in ("ACTIVE", "PASSIVE"):
        env = dict(os.environ, OMP_WAIT_POLICY=policy)
        res = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO
        )
        if res.returncode != 0:
            out.append({"OMP_WAIT_POLICY": policy, "error": res.stderr[-300:]})
            continue
        gbs, layer = res.stdout.split()
        out.append(
            {"OMP_WAIT_POLICY": policy, "numba_layer": layer, "faiss_2t_single_GB/s": float(gbs)}
        )
    return out


def memory_check(rng, n: int, m: int) -> dict:
    """Bytes an index of ``n`` 1-plane codes holds vs the bytes the codes and ids need."""
    index = BinaryIndex(m, 1, "fixed", "ip")
    step = 1_000_000
    for start in range(0, n, step):
        stop = min(n, start + step)
        index.add(random_codes(rng, stop - start, 1, m // 64), np.arange(start, stop))
    need = n * m // 8 + n * 8
    rss = None
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS"):
                rss = int(line.split()[1]) * 1024
    return {
        "n": n,
        "m": m,
        "index_bytes": index.nbytes,
        "needed_bytes": need,
        "ratio": index.nbytes / need,
        "process_rss_bytes": rss,
    }


def machine() -> dict:
    stream_read(np.zeros(16, dtype=np.uint64), 1)  # starts numba's threading layer
    cpu = cpu_name()
    info = Path("/proc/cpuinfo")
    flags = ""
    if info.is_file():
        flags = " ".join(
            f
            for f in ("avx2", "avx512f", "avx512_vpopcntdq", "popcnt")
            if f" {f}" in info.read_text()
        )
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "numba_threading_layer": numba.threading_layer(),
        "faiss": faiss.__version__,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_start": os.getloadavg(),
    }


def markdown(res: dict) -> str:
    mc = res["machine"]
    mbw = res["machine_bandwidth"]
    lines = [
        "# Scan benchmark",
        "",
        f"`{res['command']}` — {res['date']}, median of {res['reps']} repetitions.",
        "",
        f"Machine: {mc['cpu']} ({mc['cores']} cores, {mc['cpu_flags']}), numba {mc['numba']} "
        f"(threading layer `{mc['numba_threading_layer']}`), faiss {mc['faiss']}, "
        f"OMP_WAIT_POLICY={mc['OMP_WAIT_POLICY']}. Load average at start "
        f"{', '.join(f'{x:.1f}' for x in mc['load_average_start'])}, at end "
        f"{', '.join(f'{x:.1f}' for x in res['load_average_end'])} (other jobs share the cores).",
        "",
        "Machine streaming read (1 GiB buffer, faster of two read probes, median): "
        f"**{mbw['bw1']:.1f} GB/s with 1 thread, {mbw['bw2']:.1f} GB/s with 2** "
        "(`mbw` below).",
        "",
        "## Single query, 1-plane codes (k = 10)",
        "",
        "GB/s of code bytes scanned. `bw` = streaming read of the same array (the limit "
        "for that array; a 32 MB array reads slower than a big one).",
        "",
        "| N | bits | bw 1t | bw 2t | ours 1t | ours 2t | faiss 1t | faiss 2t | ours/bw2t | best ours/bw2t | best ours/mbw2t | ours/faiss best | faiss/bw2t |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["one_plane"]:
        g = r["GB/s"]
        lines.append(
            f"| {r['n']:,} | {r['m']} | {g['bw1']:.1f} | {g['bw2']:.1f} | {g['ours1']:.1f} | "
            f"{g['ours2']:.1f} | {g['faiss1']:.1f} | {g['faiss2']:.1f} | "
            f"{r['ratio_to_bandwidth_2t']:.2f} | {r['ratio_best_to_bandwidth_2t']:.2f} | "
            f"{max(g['ours1'], g['ours2']) / mbw['bw2']:.2f} | {r['ratio_to_faiss_best']:.2f} | {r['faiss_ratio_to_bandwidth_2t']:.2f} |"
        )
    asym = [r for r in res["one_plane"] if "asymmetric_speed_vs_symmetric" in r]
    if asym:
        lines += [
            "",
            "## Asymmetric: float query against 1-plane codes, single query (speed / symmetric best)",
            "",
            "`fastscan` (the default, `search_float()`): int8 nibble tables of the float query "
            "in AVX2 registers, best 4k re-scored exactly by float tables. `tables`: exact "
            "float byte tables (scalar). `slices`: the query quantized to 4 sign planes, popcount.",
            "",
            "| N | bits | fastscan ms | tables ms | slices (4-bit) ms | **fastscan / symmetric** | tables / symmetric | slices / symmetric |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in asym:
            a = r["asymmetric_speed_vs_symmetric"]
            lines.append(
                f"| {r['n']:,} | {r['m']} | {r['ms']['asym_fastscan']:.2f} | "
                f"{r['ms']['asym_tables']:.2f} | {r['ms']['asym_slices']:.2f} | "
                f"**{a['fastscan']:.2f}** | {a['tables']:.2f} | {a['slices']:.2f} |"
            )
    batches = [r for r in res["one_plane"] if "batch" in r]
    if batches:
        lines += [
            "",
            f"## Batches of {batches[0]['batch']['queries']} queries, 1-plane codes (ms per batch)",
            "",
            "| N | bits | ours (2t) | faiss 1t | faiss 2t | faiss best / ours |",
            "|---|---|---|---|---|---|",
        ]
        for r in batches:
            b = r["batch"]["ms"]
            lines.append(
                f"| {r['n']:,} | {r['m']} | {b['ours']:.1f} | {b['faiss1']:.1f} | "
                f"{b['faiss2']:.1f} | {r['batch']['ratio_to_faiss_best']:.2f} |"
            )
    lines += [
        "",
        "## Multi-plane codes, per-document scales, cosine, single query (2 threads)",
        "",
        "Bytes = codes + scales. SDC = fast-scan nibble tables (`index/fastscan.py`): "
        "`exact` with query weights 2^-p (bit-identical to popcount), `quant` with other "
        "weights (int8 tables, best 4k re-scored by popcounts). `exact` = `search()`'s "
        "default with 2^-p weights. Cascade: plane 0 only, top k x c re-ranked with all planes.",
        "",
        "| N | planes x bits | bw 2t ms | popcount ms | popcount/bw2t | SDC exact ms | **SDC exact/bw2t** | SDC exact speed / popcount | SDC quant ms | SDC quant speed / popcount | exact ms | cascade c | cascade ms | cascade speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["multi_plane"]:
        ms = r["ms"]
        lines.append(
            f"| {r['n']:,} | {r['planes']} x {r['m']} | {ms['bw2']:.2f} | {ms['full']:.2f} | "
            f"{r['ratio_to_bandwidth_2t']:.2f} | {ms['sdc_exact']:.2f} | "
            f"**{r['sdc_exact_ratio_to_bandwidth_2t']:.2f}** | "
            f"{r['sdc_exact_speed_vs_popcount']:.2f} | {ms['sdc']:.2f} | "
            f"{r['sdc_speed_vs_popcount']:.2f} | {ms['exact']:.2f} | "
            f"{r['cascade']} | {ms['cascade']:.2f} | {r['cascade_speedup']:.2f} |"
        )
    if res.get("query_planes"):
        lines += [
            "",
            "## Queries with more planes than documents (2 x 384 codes, per-document scales, single query)",
            "",
            '`fast` = `search(method="fast")`, what the pipeline and the service use: '
            "fast-scan with the query's planes folded into one quantized table, best 4k "
            "re-scored exactly; popcount pays per plane pair. An `rbe` codec writes 8 query planes.",
            "",
            "| N | shape | query planes | popcount ms | fast ms | speed-up |",
            "|---|---|---|---|---|---|",
        ]
        for r in res["query_planes"]:
            lines.append(
                f"| {r['n']:,} | {r['shape']} | {r['query_planes']} | {r['ms']['popcount']:.2f} | "
                f"{r['ms']['fast']:.2f} | {r['speedup']:.2f} |"
            )
    if res.get("fast_agreement"):
        fa = res["fast_agreement"]
        lines += [
            "",
            f"Quantized fast-scan + re-scoring vs popcount, identical top-{fa['k']} lists: "
            + "; ".join(
                f"{r['dataset']} {r['codec']}: {r['identical']} of {r['queries']}"
                for r in fa["runs"]
            )
            + ".",
        ]
    if res.get("cascade_recall"):
        cr = res["cascade_recall"]
        lines += [
            "",
            f"Cascade recall@10 against the full {cr['planes']}-plane scan "
            f"({cr['dataset']}, {cr['model']}, residual codes): "
            + ", ".join(f"c={c}: {v:.3f}" for c, v in cr["recall@10"].items()),
        ]
    lines += [
        "",
        "## Float reference: faiss.IndexFlatIP (all threads) vs our scan of d-bit 1-plane codes",
        "",
        "| N | d | float single ms | binary single ms | speed-up | float batch ms | binary batch ms | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["float"]:
        ms = r["ms"]
        lines.append(
            f"| {r['n']:,} | {r['d']} | {ms['float_single']:.2f} | {ms['ours_single']:.2f} | "
            f"{r['speedup_single']:.1f} | {ms['float_batch']:.1f} | {ms['ours_batch']:.1f} | "
            f"{r['speedup_batch']:.1f} |"
        )
    if res.get("rescore"):
        rq = res["rescore"]
        lines += [
            "",
            f"## Rescoring with stored vectors ({rq['dataset']}, {rq['model']}, "
            f"{rq['queries']} judged queries, batch of all queries)",
            "",
            "| run | nDCG@10 | ms per query |",
            "|---|---|---|",
        ]
        for name, r in rq["runs"].items():
            lines.append(f"| {name} | {r['ndcg@10']:.4f} | {r['ms_per_query']:.3f} |")
    if res.get("omp_probe"):
        lines += [
            "",
            "## faiss with 2 threads by OpenMP wait policy (fresh process, 1M x 256 bits, single query)",
            "",
            "| OMP_WAIT_POLICY | numba layer | faiss 2t GB/s |",
            "|---|---|---|",
        ]
        for p in res["omp_probe"]:
            lines.append(
                f"| {p['OMP_WAIT_POLICY']} | {p.get('numba_layer', '?')} | "
                f"{p.get('faiss_2t_single_GB/s', float('nan')):.2f} |"
            )
    if res.get("memory"):
        mm = res["memory"]
        lines += [
            "",
            f"## Memory: {mm['n']:,} codes of {mm['m']} bits",
            "",
            f"Index arrays {mm['index_bytes'] / 1e9:.3f} GB vs codes + ids "
            f"{mm['needed_bytes'] / 1e9:.3f} GB: ratio {mm['ratio']:.3f}; process RSS "
            f"{(mm['process_rss_bytes'] or 0) / 1e9:.2f} GB (includes the benchmark's other arrays).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    if "--batch" in sys.argv[1:]:  # issue 14's rows: benchmarks/scan_batch.py
        import scan_batch

        scan_batch.main([a for a in sys.argv[1:] if a != "--batch"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batch", action="store_true", help="batch scans vs faiss and today's kernels instead"
    )
    parser.add_argument("--quick", action="store_true", help="N = 1M only (under 2 minutes)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per figure (>= 5)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "scan")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    if args.reps < 5:
        parser.error("--reps must be at least 5: figures are medians of >= 5 runs")
    rng = np.random.default_rng(0)
    started = time.time()
    res: dict = {
        "command": "python benchmarks/scan.py" + (" --quick" if args.quick else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "reps": args.reps,
        "machine": machine(),
    }
    print("machine bandwidth", flush=True)
    res["machine_bandwidth"] = machine_bandwidth(args.reps)
    sizes = [1_000_000] if args.quick else [1_000_000, 10_000_000]
    res["one_plane"] = []
    for n in sizes:
        for m in (256, 512, 1024):
            batch = 100 if n == 1_000_000 else None  # 10M batches would take minutes per rep
            print(f"1-plane n={n} m={m}", flush=True)
            res["one_plane"].append(bench_one_plane(rng, n, m, args.reps, 3, batch, n == 1_000_000))
            gc.collect()
    res["multi_plane"] = []
    shapes = [(2, 384), (4, 512)] if args.quick else [(2, 384), (2, 512), (4, 384), (4, 512)]
    for planes, m in shapes:
        print(f"{planes}-plane m={m}", flush=True)
        res["multi_plane"].append(
            bench_multi_plane(rng, 1_000_000, m, planes, args.reps, 3, cascade=10)
        )
        gc.collect()
    print("query planes", flush=True)
    res["query_planes"] = bench_query_planes(rng, 1_000_000, args.reps, 3)
    gc.collect()
    res["fast_agreement"] = fast_agreement(args.data)
    res["cascade_recall"] = cascade_recall(args.data, 4, [2, 5, 10, 20])
    res["rescore"] = rescore_quality(args.data, args.reps)
    res["float"] = []
    for d in (384, 768):
        print(f"float d={d}", flush=True)
        n_float = 100_000 if args.quick else 1_000_000  # 1M x 768 floats alone take 3 GB
        res["float"].append(bench_float(rng, n_float, d, args.reps, 3, 100))
        gc.collect()
    res["omp_probe"] = omp_probe(1_000_000)
    if not args.quick:
        print("memory", flush=True)
        res["memory"] = memory_check(rng, 10_000_000, 256)
    res["load_average_end"] = os.getloadavg()
    res["seconds"] = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "scan-quick" if args.quick else "scan"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))
    print(f"{res['seconds']:.0f} s")


if __name__ == "__main__":
    main()
