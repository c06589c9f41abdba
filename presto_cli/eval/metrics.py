"""Distribution metrics on embeddings: FAD, MMD, PRDC, CLAP score, prompt adherence (METHOD.md §6).

Everything is computed in float64 with numpy/scipy and returns plain Python floats (or small
dicts of floats), so results serialise to JSON unchanged. The embeddings themselves come from
:mod:`presto_cli.eval.embedders`; which embedder, checkpoint, N, clip length and reference set a
number was computed with is recorded by :mod:`presto_cli.eval.evaluate`, because none of these
scores is comparable across them.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import linalg
from scipy.spatial.distance import cdist

from presto_cli.errors import PrestoError

__all__ = ["gaussian_stats", "fad", "fad_from_embeddings", "mmd", "mmd_rbf", "median_bandwidth", "prdc",
           "clap_score", "prompt_adherence"]


def _as_2d(x, what: str, min_rows: int = 1) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise PrestoError(f"{what} must be a 2-D array [N, D], got shape {a.shape}")
    if a.shape[0] < min_rows:
        raise PrestoError(f"{what} needs at least {min_rows} rows, got {a.shape[0]}",
                          "evaluate more clips (--n)")
    if not np.isfinite(a).all():
        raise PrestoError(f"{what} contains NaN or Inf values")
    return a


# --------------------------------------------------------------------------------------------
# FAD


def gaussian_stats(emb) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, ``N-1``) covariance of embeddings ``[N, D]`` in float64."""
    a = _as_2d(emb, "embeddings", min_rows=2)
    mu = a.mean(axis=0)
    sigma = np.atleast_2d(np.cov(a, rowvar=False))
    return mu, sigma


def fad(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (METHOD.md §6).

    ``‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½)``. The matrix square root is
    :func:`scipy.linalg.sqrtm`; as in the classic FID/FAD code, when the product is singular (the
    root is not finite or inaccurate) ``eps·I`` is added to both covariances, and an imaginary part
    that is numerical noise is dropped (a large one is an error). The result is clamped at 0 (it
    is a squared distance; tiny negative values are round-off).
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise PrestoError(f"FAD statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                          f"sigma {s1.shape} vs {s2.shape}",
                          "the reference statistics come from another embedder")
    diff = mu1 - mu2
    covmean = _sqrtm_product(s1, s2, eps)
    tr = float(np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(float(diff @ diff) + tr, 0.0)


def _sqrtm_product(s1: np.ndarray, s2: np.ndarray, eps: float) -> np.ndarray:
    """Real square root of ``s1 @ s2`` with the classic singular-covariance fallback."""

    def root(a: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on singular input; we check below
            return linalg.sqrtm(a)

    prod = s1 @ s2
    covmean = root(prod)
    bad = not np.isfinite(covmean).all()
    if not bad:  # relative residual of the root; singular products give inaccurate roots
        scale = max(np.linalg.norm(prod), 1e-300)
        bad = np.linalg.norm(covmean @ covmean - prod) / scale > 1e-6
    if bad:
        offset = np.eye(s1.shape[0]) * eps
        covmean = root((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max() if covmean.size else 0.0
        if imag > 1e-3 * max(1.0, np.abs(np.diagonal(covmean).real).max()):
            raise PrestoError(f"FAD: the covariance square root has a large imaginary part ({imag:.3g})",
                              "the covariances are degenerate: evaluate more clips than dimensions")
        covmean = covmean.real
    return covmean


def fad_from_embeddings(a, b, eps: float = 1e-6) -> float:
    """FAD between the Gaussian fits of two embedding sets ``[N, D]`` and ``[M, D]``."""
    mu1, s1 = gaussian_stats(a)
    mu2, s2 = gaussian_stats(b)
    return fad(mu1, s1, mu2, s2, eps=eps)


# --------------------------------------------------------------------------------------------
# MMD


def median_bandwidth(ref) -> float:
    """Median heuristic: the median pairwise Euclidean distance between distinct reference rows."""
    r = _as_2d(ref, "reference embeddings", min_rows=2)
    d = cdist(r, r, metric="euclidean")
    iu = np.triu_indices(r.shape[0], k=1)
    med = float(np.median(d[iu]))
    if not med > 0:
        raise PrestoError("MMD bandwidth: all reference embeddings are identical",
                          "give an explicit bandwidth or a more varied reference set")
    return med


def mmd_rbf(a, b, bandwidth: float | None = None) -> dict[str, float]:
    """Unbiased squared MMD with the Gaussian RBF kernel (CMMD style; METHOD.md §6).

    ``k(x, y) = exp(-‖x − y‖² / (2 σ²))``; ``a`` is the evaluated set, ``b`` the reference.
    ``σ`` (``bandwidth``) defaults to the median heuristic on the reference set ``b``.
    The unbiased estimator (Gretton et al. 2012) drops the diagonals of K_aa and K_bb, so it can be
    slightly negative for equal distributions. Returns ``{"mmd2", "bandwidth"}``.
    """
    x = _as_2d(a, "evaluated embeddings", min_rows=2)
    y = _as_2d(b, "reference embeddings", min_rows=2)
    if x.shape[1] != y.shape[1]:
        raise PrestoError(f"MMD: embedding sizes differ ({x.shape[1]} vs {y.shape[1]})")
    sigma = float(bandwidth) if bandwidth is not None else median_bandwidth(y)
    if not sigma > 0:
        raise PrestoError(f"MMD bandwidth must be positive, got {sigma}")
    gamma = 1.0 / (2.0 * sigma * sigma)
    kxx = np.exp(-gamma * cdist(x, x, "sqeuclidean"))
    kyy = np.exp(-gamma * cdist(y, y, "sqeuclidean"))
    kxy = np.exp(-gamma * cdist(x, y, "sqeuclidean"))
    n, m = x.shape[0], y.shape[0]
    term_x = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    term_y = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return {"mmd2": float(term_x + term_y - 2.0 * kxy.mean()), "bandwidth": sigma}


CMMD_SIGMA = 10.0  # CMMD (Jayasumana et al. 2024), which the paper follows: RBF σ = 10, scaled ×1000
MMD_SCALE = 1000.0


def mmd_convention(bandwidth: str | float = "cmmd") -> str:
    """The words every MMD number is printed with: which bandwidth, which scale."""
    spec = parse_bandwidth(bandwidth)
    if spec == "cmmd":
        return f"CMMD convention: unbiased MMD², Gaussian RBF σ = {CMMD_SIGMA:g}, ×{MMD_SCALE:g}"
    sigma = "median pairwise distance of the reference" if spec == "median" else f"{spec:g}"
    return f"unbiased MMD², Gaussian RBF σ = {sigma}, ×{MMD_SCALE:g} (not CMMD's σ = {CMMD_SIGMA:g})"


def parse_bandwidth(bandwidth: str | float | None) -> str | float:
    """``"cmmd"`` (default, also None), ``"median"``, or a positive number (a numeric string too)."""
    if bandwidth is None:
        return "cmmd"
    if isinstance(bandwidth, str):
        key = bandwidth.strip().lower()
        if key in ("cmmd", "median"):
            return key
        try:
            bandwidth = float(key)
        except ValueError:
            raise PrestoError(f"unknown MMD bandwidth '{bandwidth}'",
                              "use cmmd (σ = 10, the default), median, or a positive number") from None
    value = float(bandwidth)
    if not (value > 0 and math.isfinite(value)):
        raise PrestoError(f"MMD bandwidth must be a positive number, got {bandwidth}",
                          "use cmmd (σ = 10, the default), median, or a positive number")
    return value


def mmd(a, b, bandwidth: str | float = "cmmd") -> dict:
    """MMD between evaluated ``a`` and reference ``b`` in a stated convention (METHOD.md §6).

    Default: CMMD's, the unbiased squared MMD of :func:`mmd_rbf` with σ = 10, times 1000.
    ``bandwidth="median"`` uses the median heuristic on the reference, a number that σ; the ×1000
    scale stays. Returns ``{"mmd": scaled value, "mmd2": unscaled, "bandwidth", "scale",
    "convention"}``.
    """
    spec = parse_bandwidth(bandwidth)
    sigma = CMMD_SIGMA if spec == "cmmd" else (None if spec == "median" else spec)
    r = mmd_rbf(a, b, sigma)
    return {"mmd": MMD_SCALE * r["mmd2"], "mmd2": r["mmd2"], "bandwidth": r["bandwidth"],
            "scale": MMD_SCALE, "convention": mmd_convention(spec)}


# --------------------------------------------------------------------------------------------
# PRDC


def _kth_nn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row to its k-th nearest other row."""
    d = cdist(x, x, "euclidean")
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def prdc(real, fake, k: int = 5) -> dict[str, float]:
    """Precision, recall, density, coverage (Naeem et al. 2020) with k nearest neighbours.

    Each real sample i owns the ball of radius r_i = distance to its k-th nearest real neighbour
    (itself excluded); likewise each fake sample for recall.
    precision = fraction of fakes inside some real ball; recall = fraction of reals inside some
    fake ball; density = (1/(kM)) Σ_j #{i: fake_j in ball_i}; coverage = fraction of real balls
    that contain at least one fake. Membership is strict (``d < r``).
    """
    r = _as_2d(real, "reference embeddings")
    f = _as_2d(fake, "evaluated embeddings")
    k = int(k)
    if k < 1:
        raise PrestoError(f"PRDC k must be at least 1, got {k}")
    if r.shape[0] <= k or f.shape[0] <= k:
        raise PrestoError(f"PRDC with k={k} needs more than {k} clips in each set "
                          f"(got {r.shape[0]} reference, {f.shape[0]} evaluated)", "raise --n")
    if r.shape[1] != f.shape[1]:
        raise PrestoError(f"PRDC: embedding sizes differ ({r.shape[1]} vs {f.shape[1]})")
    r_real = _kth_nn_radii(r, k)
    r_fake = _kth_nn_radii(f, k)
    d_rf = cdist(r, f, "euclidean")  # [N real, M fake]
    inside = d_rf < r_real[:, None]  # fake j inside real ball i
    precision = float(inside.any(axis=0).mean())
    recall = float((d_rf < r_fake[None, :]).any(axis=1).mean())
    density = float(inside.sum() / (k * f.shape[0]))
    coverage = float((d_rf.min(axis=1) < r_real).mean())
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage,
            "k": float(k)}


# --------------------------------------------------------------------------------------------
# CLAP score and prompt adherence


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def clap_score(text_emb, audio_emb) -> float:
    """Mean cosine similarity between each prompt's text embedding and its clip's audio embedding."""
    t = _as_2d(text_emb, "text embeddings")
    a = _as_2d(audio_emb, "audio embeddings")
    if t.shape != a.shape:
        raise PrestoError(f"CLAP score: {t.shape[0]} text vs {a.shape[0]} audio embeddings "
                          f"(dims {t.shape[1]} vs {a.shape[1]})", "one prompt per clip")
    return float(np.mean(np.sum(_normalise_rows(t) * _normalise_rows(a), axis=1)))


def prompt_adherence(audio_emb, style_text_emb, true_style_idx) -> float:
    """Zero-shot accuracy: fraction of clips whose nearest style text (cosine) is their own style.

    ``style_text_emb`` is ``[S, D]`` (one row per style description), ``true_style_idx`` ``[N]``.
    Chance level is 1/S.
    """
    a = _as_2d(audio_emb, "audio embeddings")
    s = _as_2d(style_text_emb, "style text embeddings")
    idx = np.asarray(true_style_idx, dtype=np.int64).reshape(-1)
    if idx.shape[0] != a.shape[0]:
        raise PrestoError(f"prompt adherence: {a.shape[0]} clips but {idx.shape[0]} style labels")
    if idx.size and (idx.min() < 0 or idx.max() >= s.shape[0]):
        raise PrestoError("prompt adherence: a style label is outside the list of styles")
    sims = _normalise_rows(a) @ _normalise_rows(s).T
    return float(np.mean(np.argmax(sims, axis=1) == idx))
