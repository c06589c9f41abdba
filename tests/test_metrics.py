"""Known-answer tests for presto_cli.eval.metrics (METHOD.md §6)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from presto_cli.errors import PrestoError
from presto_cli.eval import metrics as M


# ------------------------------------------------------------------------------------------ FAD

def test_fad_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(200, 8))
    assert M.fad_from_embeddings(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fad_diagonal_gaussians_closed_form():
    # Σ1 = diag(a), Σ2 = diag(b): Tr(Σ1+Σ2-2(Σ1Σ2)^½) = Σ(√a-√b)²
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert M.fad(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    assert expected == pytest.approx(1 + 6.25 + 4 + 1, rel=1e-12)  # the hand value


def test_fad_full_covariances_match_symmetric_formula():
    # Tr((Σ1Σ2)^½) = Tr((Σ1^½ Σ2 Σ1^½)^½) for PSD matrices that do not commute.
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = A @ A.T + 0.1 * np.eye(5), B @ B.T + 0.1 * np.eye(5)
    w, V = np.linalg.eigh(s1)
    r1 = V @ np.diag(np.sqrt(w)) @ V.T
    ev = np.linalg.eigvalsh(r1 @ s2 @ r1)
    expected = np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev, 0, None)).sum()
    mu = np.zeros(5)
    assert M.fad(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-8)


def test_fad_of_samples_approaches_closed_form():
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 1.0, size=(20000, 3))
    y = rng.normal(0.0, 1.0, size=(20000, 3)) * np.array([1.0, 2.0, 3.0]) + np.array([2.0, 0, 0])
    expected = 4.0 + (0 + 1 + 4)  # |Δμ|² + Σ(1-s)²
    assert M.fad_from_embeddings(x, y) == pytest.approx(expected, rel=0.03)


def test_fad_singular_covariances_are_finite():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 16)), rng.normal(size=(6, 16)) + 1.0  # N < D: rank-deficient
    v = M.fad_from_embeddings(x, y)
    assert math.isfinite(v) and v > 10.0  # mean shift alone contributes 16


def test_gaussian_stats_and_shape_errors():
    x = np.array([[0.0, 0.0], [2.0, 2.0]])
    mu, s = M.gaussian_stats(x)
    assert np.allclose(mu, [1, 1]) and np.allclose(s, [[2, 2], [2, 2]])  # ddof=1
    with pytest.raises(PrestoError):
        M.fad(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(PrestoError):
        M.gaussian_stats(np.zeros((1, 3)))


# ------------------------------------------------------------------------------------------ MMD

def test_mmd_hand_computed():
    x, y = np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]])
    e = math.exp
    kxy_mean = (1 + e(-2) + e(-0.5) + e(-0.5)) / 4
    expected = e(-0.5) + e(-2) - 2 * kxy_mean
    out = M.mmd_rbf(x, y, bandwidth=1.0)
    assert out["mmd2"] == pytest.approx(expected, rel=1e-12)
    assert out["bandwidth"] == 1.0


def test_mmd_median_bandwidth_is_reported():
    ref = np.array([[0.0], [1.0], [3.0]])  # pairwise distances 1, 3, 2
    assert M.median_bandwidth(ref) == pytest.approx(2.0)
    assert M.mmd_rbf(ref + 0.1, ref)["bandwidth"] == pytest.approx(2.0)


def test_mmd_unbiased_near_zero_for_same_distribution_and_grows_with_shift():
    rng = np.random.default_rng(4)
    same, biased = [], []
    for _ in range(30):
        x, y = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
        same.append(M.mmd_rbf(x, y, bandwidth=2.0)["mmd2"])
        g = 1 / 8.0
        k = lambda a, b: np.exp(-g * cdist(a, b, "sqeuclidean")).mean()  # noqa: E731
        biased.append(k(x, x) + k(y, y) - 2 * k(x, y))
    # the unbiased estimator averages to ~0; the biased V-statistic is clearly positive
    assert abs(np.mean(same)) < 0.25 * np.mean(biased)
    x = rng.normal(size=(100, 4))
    vals = [M.mmd_rbf(rng.normal(size=(100, 4)) + s, x)["mmd2"] for s in (0.0, 0.5, 1.0, 2.0)]
    assert vals[0] < 0.02 and all(b > a for a, b in zip(vals, vals[1:]))


def _cmmd_reference(x, y, sigma=10.0, scale=1000.0):
    """CMMD's own formula (google-research/cmmd distance.py, transcribed to numpy): the biased
    V-statistic, expanding squared distances through Gram matrices."""
    xx, yy, xy = x @ x.T, y @ y.T, x @ y.T
    xs, ys = np.diag(xx), np.diag(yy)
    g = 1 / (2 * sigma ** 2)
    k_xx = np.mean(np.exp(-g * (-2 * xx + xs[:, None] + xs[None, :])))
    k_yy = np.mean(np.exp(-g * (-2 * yy + ys[:, None] + ys[None, :])))
    k_xy = np.mean(np.exp(-g * (-2 * xy + xs[:, None] + ys[None, :])))
    return scale * (k_xx + k_yy - 2 * k_xy), (k_xx, k_yy, k_xy)


def test_mmd_default_is_cmmd_convention_matching_an_independent_cmmd():
    """presto's default MMD = CMMD's σ = 10 and ×1000 with the unbiased estimator: equal to the
    CMMD reference formula once its kernel-matrix diagonals (each exactly 1) are removed."""
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(40, 16)) * 3, rng.normal(size=(30, 16)) * 3 + 0.8
    n, m = len(x), len(y)
    biased, (k_xx, k_yy, k_xy) = _cmmd_reference(x, y)
    unbiased = 1000 * ((n * n * k_xx - n) / (n * (n - 1)) + (m * m * k_yy - m) / (m * (m - 1)) - 2 * k_xy)
    out = M.mmd(x, y)
    assert out["bandwidth"] == 10.0 and out["scale"] == 1000.0
    assert out["mmd"] == pytest.approx(unbiased, rel=1e-10) and out["mmd2"] == pytest.approx(unbiased / 1000)
    assert out["mmd"] != pytest.approx(biased, rel=1e-3)  # the estimators differ at this N ...
    big_x, big_y = rng.normal(size=(1500, 4)), rng.normal(size=(1500, 4)) + 2.0
    assert M.mmd(big_x, big_y)["mmd"] == pytest.approx(_cmmd_reference(big_x, big_y)[0], rel=0.02)  # ... not at large N
    assert "CMMD" in out["convention"] and "σ = 10" in out["convention"] and "×1000" in out["convention"]


def test_mmd_median_and_explicit_bandwidth_options():
    ref = np.array([[0.0], [1.0], [3.0]])
    med = M.mmd(ref + 0.1, ref, "median")
    assert med["bandwidth"] == pytest.approx(2.0) and "median" in med["convention"] and not med["convention"].startswith("CMMD")
    assert med["mmd"] == pytest.approx(1000 * M.mmd_rbf(ref + 0.1, ref)["mmd2"])
    assert M.mmd(ref + 0.1, ref, "2.5")["bandwidth"] == 2.5 == M.mmd(ref + 0.1, ref, 2.5)["bandwidth"]
    for bad in ("wide", 0, -1.0, "nan"):
        with pytest.raises(PrestoError):
            M.mmd(ref, ref, bad)


# ------------------------------------------------------------------------------------------ PRDC

REAL = np.array([[0.0], [1.0], [2.0], [3.0], [6.0]])  # k=1 radii: 1, 1, 1, 1, 3


def test_prdc_hand_built_case_a():
    fake = np.array([[0.5], [0.7], [2.2]])  # fake k=1 radii: 0.2, 0.2, 1.5
    out = M.prdc(REAL, fake, k=1)
    assert out["precision"] == pytest.approx(1.0)
    assert out["recall"] == pytest.approx(3 / 5)  # reals 1, 2, 3 fall in the ball of 2.2
    assert out["density"] == pytest.approx(6 / 3)  # each fake sits in two real balls
    assert out["coverage"] == pytest.approx(4 / 5)  # the ball around 6 holds no fake


def test_prdc_hand_built_case_b():
    fake = np.array([[0.5], [10.0], [2.2]])
    out = M.prdc(REAL, fake, k=1)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["density"] == pytest.approx(4 / 3)
    assert out["coverage"] == pytest.approx(4 / 5)


def test_prdc_k2_and_symmetry():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(30, 3)), rng.normal(size=(25, 3)) + 0.7
    ab, ba = M.prdc(a, b, k=2), M.prdc(b, a, k=2)
    assert ab["recall"] == pytest.approx(ba["precision"])  # recall is precision with roles swapped
    same = M.prdc(a, a, k=2)
    assert same["precision"] == 1.0 and same["coverage"] == 1.0
    with pytest.raises(PrestoError):
        M.prdc(a[:3], b, k=5)


# ------------------------------------------------------------------------------------------ CLAP

def test_clap_score_and_adherence():
    t = np.array([[1.0, 0.0], [0.0, 1.0]])
    a = np.array([[1.0, 1.0], [0.0, 2.0]])
    assert M.clap_score(t, a) == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    assert M.clap_score(t, a[::-1]) < M.clap_score(t, a)
    styles = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    audio = np.array([[0.9, 0.1, 0], [0.1, 0.2, 0.8], [0.6, 0.5, 0], [0, 0, 5.0]])
    assert M.prompt_adherence(audio, styles, [0, 2, 1, 2]) == pytest.approx(3 / 4)
    with pytest.raises(PrestoError):
        M.clap_score(t, a[:1])
