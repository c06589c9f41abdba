"""Known answers for the latent texture measures (presto_cli/eval/texture.py, METHOD.md section 6).

Exact values on constructed arrays (each fails when a measure runs along the wrong axis or counts
the wrong frames as token boundaries), then the issue's known answers on real latents: real clips
of another corpus seed score about 1 against the bundled reference, real latents plus Gaussian
noise of sigma 0.15 (latent units) score >= 1.4x on frame change and speckle, a latent with a step
every 4 frames has a boundary ratio >= 1.3, and `presto eval --metrics texture` reports them.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from presto_cli.eval.texture import clip_texture, latents_to_db, set_texture, texture_ratios

from conftest import ROOT, presto

ASSETS = ROOT / "presto_cli" / "assets"


# -- exact values ----------------------------------------------------------------------------


def test_frame_change_is_along_time():
    c, f = np.meshgrid(np.arange(32), np.arange(40), indexing="ij")
    ramp_t = 2.0 * f  # rises 2 dB per frame, constant over mel bins
    ramp_c = 2.0 * c  # rises over mel bins, constant in time
    assert clip_texture(ramp_t, patch=4)["frame_change"] == pytest.approx(2.0)
    assert clip_texture(ramp_c, patch=4)["frame_change"] == pytest.approx(0.0)


def test_speckle_is_what_a_3x3_median_removes():
    z = np.zeros((32, 40))
    z[10, 20] = 10.0  # one isolated grain: the median filter removes it entirely
    assert clip_texture(z, patch=4)["speckle"] == pytest.approx(10.0 / z.size)
    z[:, 5:] = 7.0  # a clean edge: the median keeps it (no speckle added)
    z[10, 20] = 7.0
    assert clip_texture(z, patch=4)["speckle"] == pytest.approx(0.0)


def test_peaks_are_counted_along_mel_and_persistence_follows_time():
    z = np.full((64, 30), -60.0)
    for b in (10, 30, 50):  # three sustained notes, 20 dB above the floor
        z[b] = -40.0
    t = clip_texture(z, patch=4)
    assert t["peaks_per_frame"] == pytest.approx(3.0)
    assert t["peak_persistence"] == pytest.approx(1.0)
    flicker = z.copy()
    flicker[:, 1::2] = -60.0  # the notes vanish every other frame
    f = clip_texture(flicker, patch=4)
    assert f["peaks_per_frame"] == pytest.approx(1.5)
    assert f["peak_persistence"] == pytest.approx(0.0)
    for hop, kept in ((1, 1.0), (2, 0.0)):  # a glissando: the peak moves `hop` bins per frame
        gliss = np.full((64, 20), -60.0)
        gliss[10 + hop * np.arange(20), np.arange(20)] = -40.0
        assert clip_texture(gliss, patch=4)["peak_persistence"] == pytest.approx(kept), hop


def test_boundary_ratio_counts_the_token_edges():
    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 1.0, (32, 64))
    steps = np.repeat(rng.normal(0.0, 6.0, 16), 4)[None, :]  # a new level every 4 frames
    t = clip_texture(base + steps, patch=4)
    assert t["boundary_ratio"] > 3.0
    # the same steps shifted by one frame sit inside tokens: the ratio falls below 1
    assert clip_texture(base + np.roll(steps, 1, axis=1), patch=4)["boundary_ratio"] < 0.7


def test_levels_are_relative_to_the_clip_maximum():
    z = np.linspace(-100.0, 0.0, 1001)[None, :].repeat(2, 0)
    t = clip_texture(z, patch=1)
    assert (t["level_p5"], t["level_p50"], t["level_p95"]) == pytest.approx((-95.0, -50.0, -5.0))
    assert t["boundary_ratio"] == 1.0


def test_ratios_divide_and_levels_subtract():
    g = {"frame_change": 6.0, "speckle": 4.0, "boundary_ratio": 1.5, "peaks_per_frame": 20.0,
         "peak_persistence": 0.5, "level_p5": -60.0, "level_p50": -40.0, "level_p95": -20.0}
    r = {"frame_change": 3.0, "speckle": 2.0, "boundary_ratio": 1.0, "peaks_per_frame": 16.0,
         "peak_persistence": 0.8, "level_p5": -55.0, "level_p50": -35.0, "level_p95": -15.0}
    out = texture_ratios(g, r)
    assert out["frame_change_ratio"] == 2.0 and out["speckle_ratio"] == 2.0
    assert out["peaks_per_frame_ratio"] == 1.25 and out["peak_persistence_ratio"] == pytest.approx(0.625)
    assert out["level_p50_diff_db"] == -5.0


# -- real latents ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_latents(tmp_path_factory):
    """Scaled latents of 14 real 4 s clips (one per style, corpus seed 11) through the demo codec,
    and the codec."""
    from presto_cli.audio import load_audio
    from presto_cli.codec import load_codec

    d = tmp_path_factory.mktemp("tex") / "synth"
    presto("data", "synth", "--out", d, "--n", 14, "--seconds", 4, "--seed", 11, "-j", 1)
    codec = load_codec(ASSETS / "demo-codec.safetensors", "cpu").eval()
    files = sorted((d / "audio").glob("*.wav"))
    with torch.no_grad():
        z = torch.cat([codec.encode(load_audio(f, codec.sample_rate)[None]) for f in files])
    return z, codec, d


def test_real_latents_score_about_one_against_the_bundled_reference(real_latents):
    z, codec, _ = real_latents
    ref = json.loads((ASSETS / "ref_heldout_texture.json").read_text())
    t = set_texture(latents_to_db(z, codec), patch=4)
    r = texture_ratios(t, ref)
    for k in ("frame_change_ratio", "speckle_ratio", "peaks_per_frame_ratio", "peak_persistence_ratio"):
        assert 0.8 < r[k] < 1.25, (k, r[k])
    assert 0.9 < t["boundary_ratio"] < 1.05
    for q in (5, 50, 95):
        assert abs(r[f"level_p{q}_diff_db"]) < 4.0


def test_noise_and_a_token_grid_are_seen(real_latents):
    z, codec, _ = real_latents
    clean = set_texture(latents_to_db(z, codec), patch=4)
    g = torch.Generator().manual_seed(0)
    noisy = set_texture(latents_to_db(z + 0.15 * torch.randn(z.shape, generator=g), codec), patch=4)
    r = texture_ratios(noisy, clean)
    assert r["frame_change_ratio"] >= 1.4 and r["speckle_ratio"] >= 1.4, r
    # a step every 4 frames (a level per token, the same over all mel bins)
    levels = torch.randn(z.shape[0], 1, -(-z.shape[-1] // 4), generator=g) * 0.2
    grid = z + levels.repeat_interleave(4, dim=-1)[..., : z.shape[-1]]
    t = set_texture(latents_to_db(grid, codec), patch=4)
    assert t["boundary_ratio"] >= 1.3, t["boundary_ratio"]
    assert clean["boundary_ratio"] < 1.05


@pytest.mark.slow
def test_eval_reports_texture_of_a_model_and_of_a_folder(real_latents, tmp_path):
    """`presto eval --metrics texture` on demo-s (its latents) and on real audio (re-encoded)."""
    _, _, d = real_latents
    out = tmp_path / "r.json"
    presto("eval", "-m", "demo-s", "--gen", d / "audio", "--metrics", "texture", "--n", 4,
           "--texture-ref", d / "audio", "--out", out, "--audio-dir", tmp_path / "a")
    doc = json.loads(out.read_text())
    by = {s["name"]: s["scores"]["texture"] for s in doc["systems"]}
    real = by["audio"]
    assert real["frame_change_ratio"] == pytest.approx(1.0, abs=0.25)  # the first 4 of the 14 reference clips
    assert by["demo-s"]["n"] == 4 and by["demo-s"]["patch"] == 4
    assert doc["texture_reference"]["n"] == 14
    assert by["demo-s"]["frame_change"] > 0 and 0 < by["demo-s"]["peak_persistence"] <= 1
