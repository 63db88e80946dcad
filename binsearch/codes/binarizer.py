"""The recurrent binarizer (BEBR): a learned map from float embeddings to multi-plane codes.

Document side (``P`` planes of ``m`` bits)::

    z   = W(x)                                   (n, m)   projection / rotation
    s_0 = sign(z),          r_0 = z
    for i = 1 .. P-1:
        x̂_i = B_i(sum_{p<i} alpha_p s_p)          reconstruction of z from the code so far
        r_i = z - x̂_i                              what the code still misses
        s_i = sign(R_i(r_i))
    alpha_i = <r_i, s_i> / m                      least-squares scale of s_i for r_i

``alpha`` are the per-document plane scales of the ``residual`` codec. With
``W = R_i = B_i = identity`` the model *is* greedy residual binarization (and
for ``P = 1`` the ``sign`` codec): that is the untrained starting point, so
training can only start from a good training-free codec. ``init="itq"`` starts
instead from an ITQ rotation (Gong & Lazebnik 2011), a stronger training-free
codec. ``W``, ``R_i``, ``B_i`` are a linear map plus an optional
Linear–BatchNorm–ReLU–Linear branch whose last layer starts at zero, so the
branch changes nothing until trained. ``sign`` trains straight-through
(:func:`binsearch.codes.quantize.sign_ste`).

Query side: queries are not stored, so they need not be binary at full
strength. ``A(q)`` maps a float query into the code space and is written as
``query_planes`` residual planes with per-query weights (the index scores any
query plane count against any document plane count). Scoring is the cosine of
``A(q)``'s planes against the document code value ``sum_p alpha_p s_p``.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from binsearch.codes.quantize import residual_binarize, sign_ste

MODEL_FORMAT = "binsearch-rbe"
MODEL_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.npz"


class BinarizerError(ValueError):
    """Bad input to the binarizer, or a model file that cannot be used."""


class Affine(nn.Module):
    """``y = L x + b + g(x)``: a linear map plus an optional zero-started MLP branch.

    ``g`` is Linear–BatchNorm–ReLU–Linear with its last layer initialised to
    zero, so a freshly built module is exactly the linear map it was given.
    """

    def __init__(self, d_in: int, d_out: int, hidden: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out, bias=bias)
        self.branch: nn.Sequential | None = None
        if hidden > 0:
            last = nn.Linear(hidden, d_out)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.branch = nn.Sequential(
                nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), last
            )

    def set_linear(self, weight: np.ndarray | torch.Tensor, bias: Any = None) -> None:
        """Overwrite the linear part: ``weight`` float ``(d_out, d_in)``, ``bias`` ``(d_out,)``."""
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(np.asarray(weight), dtype=torch.float32))
            if self.linear.bias is not None:
                if bias is None:
                    self.linear.bias.zero_()
                else:
                    self.linear.bias.copy_(torch.as_tensor(np.asarray(bias), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if self.branch is not None:
            y = y + self.branch(x)
        return y


class RecurrentBinarizer(nn.Module):
    """Float embeddings ``(n, dim)`` to ``planes`` sign planes of ``m`` bits, and queries to code space.

    Args:
        dim: input embedding width ``d``.
        m: bits per plane (default ``dim``); may differ from ``dim``.
        planes: document planes ``P >= 1``.
        hidden: width of the MLP branches (0: purely linear maps).
        query_planes: residual planes used to write a query (not stored; the scan
            costs ``planes * query_planes`` popcounts per word). Default ``max(8, 2P)``.
        query_dim: width of query embeddings (default ``dim``); a compatible model
            may take queries from another encoder than the one its codes model.

    The freshly built model is greedy residual binarization of ``x`` (identity
    maps; needs ``m == dim``): :meth:`init_itq` replaces ``W`` by a rotation.
    """

    def __init__(
        self,
        dim: int,
        m: int | None = None,
        planes: int = 1,
        hidden: int = 0,
        query_planes: int | None = None,
        query_dim: int | None = None,
    ) -> None:
        super().__init__()
        m = int(dim if m is None else m)
        # Queries need more planes than documents to stay near their float value.
        query_planes = max(8, 2 * planes) if query_planes is None else query_planes
        if dim < 1 or m < 1 or planes < 1 or query_planes < 1:
            raise BinarizerError(
                f"dim, m, planes and query_planes must be positive, got {dim}, {m}, {planes}, {query_planes}"
            )
        self.dim, self.m, self.planes, self.hidden = int(dim), m, int(planes), int(hidden)
        self.query_planes = int(query_planes)
        self.query_dim = int(dim if query_dim is None else query_dim)
        self.version = ""  # set by training: identifies the code space for compatibility checks
        self.compatible_with: list[str] = []
        self.W = Affine(dim, m, hidden)
        self.A = Affine(self.query_dim, m, 0, bias=False)
        self.R = nn.ModuleList(Affine(m, m, hidden) for _ in range(planes - 1))
        self.B = nn.ModuleList(Affine(m, m, 0) for _ in range(planes - 1))
        eye = _embedding_eye(m, dim)
        self.W.set_linear(eye)
        self.A.set_linear(_embedding_eye(m, self.query_dim))
        for layer in (*self.R, *self.B):
            layer.set_linear(np.eye(m, dtype=np.float32))

    # ----------------------------------------------------------------- init
    def init_itq(
        self,
        x: np.ndarray,
        iters: int = 20,
        seed: int = 0,
        max_rows: int = 10000,
        center: bool | None = None,
    ) -> RecurrentBinarizer:
        """Start ``W`` (and the query map ``A``) from ITQ on float32 ``(n, dim)`` embeddings.

        ITQ alternates ``B = sign(V R)`` and the orthogonal Procrustes step
        ``R = U V'`` from ``svd(V' B)``, where ``V`` are the centred inputs (at
        most ``max_rows`` of them, a random subset). For
        ``m > dim`` the extra rows are further random rotations, so each input
        direction is seen by ``m / dim`` planes of bits. ``center`` subtracts the
        mean in ``W``'s bias (default: for one plane only). Returns ``self``.
        """
        x = _check_rows(x, self.dim, minimum=2)
        rng = np.random.default_rng(seed)
        if x.shape[0] > max_rows:  # the rotation is settled long before this many rows
            x = x[np.sort(rng.choice(x.shape[0], max_rows, replace=False))]
        mu = x.mean(0)
        v = x - mu
        rows = []
        for block in range(-(-self.m // self.dim)):
            rot = np.linalg.qr(rng.standard_normal((self.dim, self.dim)))[0].astype(np.float32)
            if block == 0:
                for _ in range(iters):
                    u, _, vt = np.linalg.svd(v.T @ np.sign(v @ rot))
                    rot = u @ vt
            rows.append(rot.T)
        weight = np.concatenate(rows)[: self.m].astype(np.float32)  # (m, dim)
        # Centring balances the bits of one plane (measured: better ranking), but with
        # several planes the code tracks x - mu, whose norm varies per document, and
        # the index's cosine then ranks by the wrong norm (measured: worse, untrained).
        center = self.planes == 1 if center is None else center
        self.W.set_linear(weight, -(weight @ mu) if center else None)
        if self.query_dim == self.dim:
            self.A.set_linear(weight)
        return self

    # -------------------------------------------------------------- forward
    def code_space(self, x: torch.Tensor) -> torch.Tensor:
        """``z = W(x)``: float ``(n, dim) -> (n, m)``."""
        return self.W(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Document codes, differentiable through the straight-through sign.

        Args:
            x: float32 ``(n, dim)``.

        Returns:
            ``signs`` float ``(n, P, m)`` of ±1 and ``scales`` float ``(n, P)``;
            the code value is ``(signs * scales[..., None]).sum(1)``.
        """
        z = self.code_space(x)
        r = z
        recon = torch.zeros_like(z)
        signs, scales = [], []
        for p in range(self.planes):
            if p > 0:
                r = z - self.B[p - 1](recon)
                s = sign_ste(self.R[p - 1](r))
            else:
                s = sign_ste(r)
            a = (r * s).mean(-1, keepdim=True)
            recon = recon + a * s
            signs.append(s)
            scales.append(a[:, 0])
        return torch.stack(signs, 1), torch.stack(scales, 1)

    def query(self, q: torch.Tensor) -> torch.Tensor:
        """``A(q)``: float queries ``(n, query_dim) -> (n, m)`` in code space."""
        return self.A(q)

    # ---------------------------------------------------------------- numpy
    @torch.no_grad()
    def encode_documents(
        self, x: np.ndarray, batch_size: int = 8192
    ) -> tuple[np.ndarray, np.ndarray]:
        """Signs as bool ``(n, P, m)`` (True = +1) and scales float32 ``(n, P)``."""
        x = _check_rows(x, self.dim)
        was = self.training
        self.eval()
        signs, scales = [], []
        for start in range(0, x.shape[0], batch_size):
            s, a = self(torch.from_numpy(x[start : start + batch_size]))
            signs.append((s > 0).numpy())
            scales.append(a.numpy().astype(np.float32))
        self.train(was)
        if not signs:
            return np.zeros((0, self.planes, self.m), bool), np.zeros((0, self.planes), np.float32)
        return np.concatenate(signs), np.concatenate(scales)

    @torch.no_grad()
    def encode_queries(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Query planes as bool ``(n, query_planes, m)`` and their weights float32 ``(n, query_planes)``.

        The float ``A(q)`` written as greedy residual planes with per-query
        scales (the quantizer core), close to the float query at a few planes.
        """
        q = _check_rows(q, self.query_dim)
        was = self.training
        self.eval()
        zq = self.query(torch.from_numpy(q)).numpy()
        self.train(was)
        signs, scales = residual_binarize(zq, self.query_planes, axis=-1)
        return np.transpose(signs > 0, (1, 0, 2)), np.ascontiguousarray(scales[:, :, 0].T)

    # ----------------------------------------------------------- save/load
    def config(self) -> dict[str, Any]:
        """The JSON-able architecture (everything but the weights)."""
        return {
            "format": MODEL_FORMAT,
            "format_version": MODEL_VERSION,
            "dim": self.dim,
            "m": self.m,
            "planes": self.planes,
            "hidden": self.hidden,
            "query_planes": self.query_planes,
            "query_dim": self.query_dim,
            "version": self.version,
            "compatible_with": list(self.compatible_with),
        }

    def weights(self) -> dict[str, np.ndarray]:
        """All parameters and buffers as float32 numpy arrays, by state-dict name."""
        return {k: v.detach().cpu().numpy() for k, v in self.state_dict().items()}

    @classmethod
    def from_parts(
        cls, config: dict[str, Any], weights: dict[str, np.ndarray]
    ) -> RecurrentBinarizer:
        """Rebuild from :meth:`config` and :meth:`weights`; :class:`BinarizerError` if they do not fit."""
        if config.get("format") != MODEL_FORMAT:
            raise BinarizerError(f"not a binarizer model (format {config.get('format')!r})")
        if config.get("format_version") != MODEL_VERSION:
            raise BinarizerError(
                f"binarizer model format version {config.get('format_version')}, "
                f"this binsearch reads version {MODEL_VERSION}"
            )
        model = cls(
            config["dim"],
            config["m"],
            config["planes"],
            config.get("hidden", 0),
            config.get("query_planes"),
            config.get("query_dim"),
        )
        model.version = str(config.get("version", ""))
        model.compatible_with = list(config.get("compatible_with", []))
        state = model.state_dict()
        if set(weights) != set(state):
            raise BinarizerError("binarizer weights do not match its config (damaged model file?)")
        for k, v in weights.items():
            if tuple(v.shape) != tuple(state[k].shape):
                raise BinarizerError(
                    f"binarizer weight {k} has shape {v.shape}, expected {tuple(state[k].shape)}"
                )
        model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()})
        model.eval()
        return model

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``config.json`` and ``weights.npz`` into directory ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.savez(path / WEIGHTS_FILE, **self.weights())
        (path / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RecurrentBinarizer:
        """Read a model written by :meth:`save`."""
        path = Path(path)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise BinarizerError(
                f"{path}: not a binarizer model (expected {CONFIG_FILE} and {WEIGHTS_FILE})"
            )
        try:
            config = json.loads((path / CONFIG_FILE).read_text())
            with np.load(path / WEIGHTS_FILE, allow_pickle=False) as f:
                weights = {k: f[k] for k in f.files}
        except (OSError, ValueError) as exc:
            raise BinarizerError(f"{path}: unreadable binarizer model ({exc})") from exc
        return cls.from_parts(config, weights)

    def to_json(self) -> dict[str, Any]:
        """Config plus base64 weights in one JSON object: an index keeps its model inline."""
        buf = io.BytesIO()
        np.savez_compressed(buf, **self.weights())
        return {**self.config(), "weights_npz_b64": base64.b64encode(buf.getvalue()).decode()}

    @classmethod
    def from_json(cls, blob: dict[str, Any]) -> RecurrentBinarizer:
        """Inverse of :meth:`to_json`."""
        try:
            raw = base64.b64decode(blob["weights_npz_b64"])
            with np.load(io.BytesIO(raw), allow_pickle=False) as f:
                weights = {k: f[k] for k in f.files}
        except (KeyError, ValueError, OSError) as exc:
            raise BinarizerError(f"inline binarizer model is damaged ({exc})") from exc
        return cls.from_parts({k: v for k, v in blob.items() if k != "weights_npz_b64"}, weights)


def _embedding_eye(m: int, d: int) -> np.ndarray:
    """``(m, d)`` identity for ``m == d``; otherwise orthonormal rows/columns (fixed seed)."""
    if m == d:
        return np.eye(m, dtype=np.float32)
    rng = np.random.default_rng(0)
    rows = [np.eye(d)] + [
        np.linalg.qr(rng.standard_normal((d, d)))[0] for _ in range(-(-m // d) - 1)
    ]
    return np.concatenate(rows)[:m].astype(np.float32)


def _check_rows(x: np.ndarray, dim: int, minimum: int = 0) -> np.ndarray:
    """float32 C-contiguous ``(n, dim)``; :class:`BinarizerError` for wrong width, NaN, too few rows."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise BinarizerError(f"expected embeddings of shape (n, {dim}), got {x.shape}")
    if x.shape[0] < minimum:
        raise BinarizerError(f"need at least {minimum} embeddings, got {x.shape[0]}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise BinarizerError("embeddings contain NaN or infinite values")
    return x


def load_embedding_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Float32 ``(n, d)`` embeddings from a ``.npy`` file or a folder holding ``corpus.npy``."""
    path = Path(path)
    file = path / "corpus.npy" if path.is_dir() else path
    if not file.is_file():
        raise BinarizerError(f"{path}: no embeddings here (expected a .npy file or corpus.npy)")
    try:
        x = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BinarizerError(f"{file}: not a .npy array ({exc})") from exc
    if x.ndim != 2:
        raise BinarizerError(f"{file}: expected a 2-d array (n, d), got shape {x.shape}")
    return _check_rows(x, x.shape[1])
