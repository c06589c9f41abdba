"""The STFT VAE codec, its losses, the autoencoder stage, the codec artefact and the latent cache."""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from presto_cli.codec import build_codec, codec_from_embedded, codec_state_for_embedding, load_codec
from presto_cli.codec.losses import (kl_divergence, log_mel_l1, mel_filterbank, mel_l1_loss,
                                     mrstft_distance, mrstft_loss, spectral_losses)
from presto_cli.codec.export import export_codec
from presto_cli.codec.losses import CodecLossConfig, reconstruction_losses
from presto_cli.stages.autoencoder import AutoencoderRecipe
from presto_cli.codec.vae import istft_same, stft_same
from presto_cli.errors import PrestoError
from presto_cli.io import load_artefact, save_artefact, sub_state
from presto_cli.recipes import load_recipe

SR = 16000
TINY = dict(sample_rate=SR, n_fft=256, hop_length=64, downsample=4, latent_channels=8, width=48,
            depth=1, frame_depth=1, mlp_ratio=2.0)


def tiny_codec(seed: int = 0, **over):
    torch.manual_seed(seed)
    return build_codec({**TINY, **over})


def tones(n_samples: int = 8192) -> torch.Tensor:
    """Four sines and four triads, [8, 1, T]."""
    t = torch.arange(n_samples) / SR
    clips = [0.3 * torch.sin(2 * math.pi * f * t) for f in (220.0, 330.0, 440.0, 523.25)]
    for chord in ((261.6, 329.6, 392.0), (220.0, 277.2, 329.6), (196.0, 246.9, 293.7),
                  (174.6, 220.0, 261.6)):
        clips.append(sum(0.15 * torch.sin(2 * math.pi * f * t + i) for i, f in enumerate(chord)))
    return torch.stack(clips)[:, None]


# ---------------------------------------------------------------------------------------------
# Signal processing


def test_stft_same_framing_and_exact_inverse():
    x = torch.randn(3, 4096, generator=torch.Generator().manual_seed(0))
    spec = stft_same(x, 256, 64)
    assert spec.shape == (3, 129, 4096 // 64)
    # frame k is centred on sample k*hop + hop/2: an impulse there peaks in frame k
    imp = torch.zeros(1, 4096)
    imp[0, 10 * 64 + 32] = 1.0
    assert int(stft_same(imp, 256, 64).abs().sum(1).argmax()) == 10
    assert torch.allclose(istft_same(spec, 256, 64), x, atol=1e-5)


def test_decoder_synthesis_head_inverts_analysis():
    codec = tiny_codec()
    x = 0.1 * torch.randn(2, 1, 4096, generator=torch.Generator().manual_seed(1))
    spec = codec.analysis(x)
    y = codec.synthesize(torch.log(spec.abs()), torch.angle(spec))
    assert y.shape == x.shape
    assert (y - x).abs().max() < 1e-5
    # a wrong phase must not reconstruct (the test can fail)
    y_bad = codec.synthesize(torch.log(spec.abs()), torch.zeros_like(spec.real))
    assert (y_bad - x).abs().max() > 1e-2


def test_mel_filterbank_partition_of_unity_and_htk_scale():
    fb = mel_filterbank(SR, 1024, 40)
    freqs = torch.linspace(0, SR / 2, 513)
    centres = freqs[fb.argmax(1)]
    # triangles overlapping at their neighbours' centres sum to one between the first and last centre
    inside = (freqs > centres[0] + 20) & (freqs < centres[-1] - 20)
    assert torch.allclose(fb.sum(0)[inside], torch.ones(int(inside.sum())), atol=1e-5)
    # HTK mel: 1000 Hz = 1000 mel, so the centres are evenly spaced in 2595*log10(1 + f/700)
    mel = 2595 * torch.log10(1 + centres / 700)
    steps = mel[1:] - mel[:-1]
    assert steps.std() < 0.2 * steps.mean()


def test_mrstft_and_mel_losses_zero_for_identical_and_grow_with_noise():
    g = torch.Generator().manual_seed(0)
    x = tones(8192)[:2]
    assert float(mrstft_loss(x, x, (512, 256, 128))) < 1e-6
    assert float(mel_l1_loss(x, x, SR)) < 1e-6
    noise = torch.randn(x.shape, generator=g)
    mr = [mrstft_distance(x + a * noise, x, (512, 256, 128)) for a in (1e-3, 1e-2, 1e-1)]
    mel = [log_mel_l1(x + a * noise, x, SR) for a in (1e-3, 1e-2, 1e-1)]
    assert mr[0] < mr[1] < mr[2] and mr[0] > 1e-3
    assert mel[0] < mel[1] < mel[2] and mel[0] > 1e-3
    # the fused training loss equals the two separate losses
    fused = spectral_losses(x + 0.01 * noise, x, SR, (512, 256), (1024, 512))
    assert torch.allclose(fused["mrstft"], mrstft_loss(x + 0.01 * noise, x, (512, 256)))
    assert torch.allclose(fused["mel"], mel_l1_loss(x + 0.01 * noise, x, SR, (1024, 512)))


def test_kl_closed_form():
    z = torch.zeros(4, 8, 10)
    assert float(kl_divergence(z, z)) == 0.0  # standard normal posterior
    assert float(kl_divergence(z + 1.0, z)) == pytest.approx(0.5)
    lv = torch.full_like(z, math.log(4.0))
    assert float(kl_divergence(z, lv)) == pytest.approx(0.5 * (4 - 1 - math.log(4)), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# The codec learns


def test_tiny_codec_overfits_tones():
    """Reconstruction log-mel L1 must drop by 3x from initialisation in 90 Adam steps (~10 s)."""
    x = tones(4096)
    codec = tiny_codec(width=32)
    cfg = CodecLossConfig(stft_sizes=[512, 256, 128], kl_weight=1e-4)

    def quality() -> float:
        with torch.no_grad():
            return log_mel_l1(codec.decode(codec.encode(x)), x, SR)

    before = quality()
    opt = torch.optim.Adam(codec.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(90):
        noise = torch.randn(8, 8, codec.num_frames(x.shape[-1]), generator=g)
        loss, parts, _ = reconstruction_losses(codec, x, noise, cfg)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
        opt.step()
    after = quality()
    assert after < before / 3, (before, after)
    # encode is deterministic (posterior mean)
    with torch.no_grad():
        assert torch.equal(codec.encode(x), codec.encode(x))


# ---------------------------------------------------------------------------------------------
# Export, latent scale, artefacts


def test_latent_scale_gives_sigma_data(tmp_path):
    codec = tiny_codec()
    x = tones(8192)
    with torch.no_grad():
        raw_std = float(codec.encode_dist(x)[0].std(unbiased=False))
    report = export_codec(codec, tmp_path / "codec.safetensors", x, x[:2], sigma_data=0.5,
                          eval_split="train")
    with torch.no_grad():
        z = codec.encode(x)
    assert float(z.std(unbiased=False)) == pytest.approx(0.5, rel=1e-3)
    assert float(codec.latent_scale) == pytest.approx(0.5 / raw_std, rel=1e-3)
    assert abs(raw_std - 0.5) > 0.05  # the scale did something
    # decode undoes the scale: same audio as decoding the raw mean
    with torch.no_grad():
        assert torch.allclose(codec.decode(z), codec.decode_raw(codec.encode_dist(x)[0]), atol=1e-5)
    rec = json.loads((tmp_path / "recon.json").read_text())
    assert rec["recon"]["log_mel_l1"] == pytest.approx(report["recon"]["log_mel_l1"])
    assert rec["recon"]["split"] == "train" and rec["latent"]["sigma_data"] == 0.5


def test_artefact_roundtrip_and_mismatch(tmp_path):
    codec = tiny_codec(seed=3)
    x = tones(4096)[:3]
    path = tmp_path / "codec.safetensors"
    export_codec(codec, path, x, x[:1])
    loaded = load_codec(path)
    with torch.no_grad():
        z = codec.encode(x)
        assert torch.equal(loaded.encode(x), z)
        assert torch.equal(loaded.decode(z), codec.decode(z))
    tensors, meta = load_artefact(path)
    assert meta["kind"] == "codec" and meta["model"]["width"] == 48 and "log_mel_l1" in meta["recon"]

    # embedded in a model artefact, both with and without the prefix stripped
    emb, emb_meta = codec_state_for_embedding(loaded)
    assert all(k.startswith("codec.") for k in emb)
    other = {"dit.w": torch.zeros(2), **emb}
    save_artefact(tmp_path / "model.safetensors", other, {"kind": "teacher", "codec": emb_meta})
    t2, m2 = load_artefact(tmp_path / "model.safetensors")
    for c2 in (codec_from_embedded(t2, m2["codec"]), codec_from_embedded(sub_state(t2, "codec"), m2["codec"]),
               load_codec(tmp_path / "model.safetensors")):
        with torch.no_grad():
            assert torch.equal(c2.decode(z), codec.decode(z))

    # a config that does not match the weights is one clear PrestoError
    bad = dict(meta, model={**meta["model"], "width": 64})
    save_artefact(tmp_path / "bad.safetensors", tensors, bad)
    with pytest.raises(PrestoError, match="do not match"):
        load_codec(tmp_path / "bad.safetensors")
    typo = dict(meta, model={**meta["model"], "widht": 48})
    save_artefact(tmp_path / "typo.safetensors", tensors, typo)
    with pytest.raises(PrestoError, match="widht"):
        load_codec(tmp_path / "typo.safetensors")
    save_artefact(tmp_path / "nocodec.safetensors", {"dit.w": torch.zeros(2)}, {"kind": "teacher"})
    with pytest.raises(PrestoError, match="without a codec"):
        load_codec(tmp_path / "nocodec.safetensors")
    with pytest.raises(PrestoError, match="unknown codec kind"):
        build_codec({"kind": "nope"})
    with pytest.raises(PrestoError, match="mono audio"):
        codec.encode(torch.zeros(1, 2, 512))


# ---------------------------------------------------------------------------------------------
# Latent cache


def _write_folder(root: Path, n_files: int = 3, seconds: float = 2.5, heldout: int | None = 2) -> None:
    from presto_cli.audio import write_audio

    root.mkdir(parents=True, exist_ok=True)
    t = torch.arange(int(seconds * SR)) / SR
    lines = []
    for i in range(n_files):
        write_audio(root / f"clip{i}.wav", 0.3 * torch.sin(2 * math.pi * (220 + 110 * i) * t), SR)
        row = {"path": f"clip{i}.wav", "caption": f"tone number {i}"}
        if i == heldout:
            row["split"] = "heldout"
        lines.append(json.dumps(row))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")


def test_latent_cache_reused_and_rebuilt(tmp_path, monkeypatch):
    from presto_cli.audio import load_audio
    from presto_cli.data import latents as L
    from presto_cli.recipes import DataConfig

    data_dir = tmp_path / "data"
    _write_folder(data_dir)
    x = tones(4096)[:2]
    ca, cb = tiny_codec(seed=0), tiny_codec(seed=1)
    export_codec(ca, tmp_path / "a.safetensors", x, x[:1])
    export_codec(cb, tmp_path / "b.safetensors", x, x[:1])
    cfg = DataConfig(path=str(data_dir), clip_seconds=1.0, latents=str(tmp_path / "cache"))

    d1 = L.ensure_latent_cache(tmp_path / "a.safetensors", cfg, "cpu", batch_size=4)
    ds = L.LatentDataset(d1, "all")
    assert len(ds) == 6  # 3 files x two whole 1 s windows (the last 0.5 s is dropped)
    item = ds[3]
    assert item["caption"] == "tone number 1" and item["latents"].shape == (8, ca.num_frames(SR))
    audio = load_audio(data_dir / "clip1.wav", SR)[:, SR:2 * SR]  # second window of file 1
    with torch.no_grad():
        want = ca.encode(audio[None])[0]
    assert torch.allclose(item["latents"], want, atol=1e-5)
    # splits follow the folder dataset's rule (file 2 is marked held-out in the manifest)
    assert len(L.LatentDataset(d1)) == 4 and len(L.LatentDataset(d1, "heldout")) == 2
    with pytest.raises(PrestoError, match="empty"):
        L.LatentDataset(d1, "val")

    # same codec -> reused without encoding anything
    def no_encode(*a, **k):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr("presto_cli.codec.base.load_codec", no_encode)
    assert L.ensure_latent_cache(tmp_path / "a.safetensors", cfg, "cpu") == d1
    monkeypatch.undo()

    # a different codec -> a different cache with different latents
    d2 = L.ensure_latent_cache(tmp_path / "b.safetensors", cfg, "cpu", batch_size=4)
    assert d2 != d1 and (d1 / "cache.json").is_file()
    assert not torch.allclose(L.LatentDataset(d2, "all")[3]["latents"], item["latents"])
    assert json.loads((d2 / "cache.json").read_text())["count"] == 6
    assert not [p for p in d2.parent.iterdir() if p.name.endswith(".tmp")]  # no leftovers

    with pytest.raises(PrestoError, match="not a latent cache"):
        L.LatentDataset(tmp_path)
    with pytest.raises(PrestoError, match="manifest"):
        L.ensure_latent_cache(tmp_path / "a.safetensors", DataConfig(path=str(tmp_path), clip_seconds=1.0))


# ---------------------------------------------------------------------------------------------
# The stage through the shared training loop


def test_autoencoder_stage_trains_exports_and_resumes_exactly(tmp_path):
    from presto_cli.train.loop import run_stage

    data = tmp_path / "data"
    _write_folder(data, n_files=4, heldout=None)
    over = [f"data.path={data}", "data.val_fraction=0.3", "train.ckpt_every=4"]
    recipe = load_recipe("recipes/tiny/autoencoder.yaml", over + ["train.steps=8"])
    assert isinstance(recipe, AutoencoderRecipe)
    a = run_stage(recipe, tmp_path / "a", progress=False)
    codec = load_codec(a)
    assert codec.channels == 8 and codec.hop == 256
    report = json.loads((tmp_path / "a" / "recon.json").read_text())
    assert report["recon"]["log_mel_l1"] > 0 and report["latent"]["sigma_data"] == 0.5
    assert report["recon"]["split"] in ("val", "train")
    from presto_cli.data.folder import AudioClipDataset

    train = AudioClipDataset(data, sample_rate=SR, clip_seconds=1.0, split="train", val_fraction=0.3)
    with torch.no_grad():
        z = codec.encode(torch.stack([train[i]["audio"] for i in range(len(train))]))
    assert float(z.std(unbiased=False)) == pytest.approx(0.5, rel=0.25)

    # stop at step 4 and resume: the same weights as the uninterrupted run
    short = load_recipe("recipes/tiny/autoencoder.yaml", over + ["train.steps=4"])
    run_stage(short, tmp_path / "b", progress=False)
    b = run_stage(recipe, tmp_path / "b", resume=True, progress=False)
    ta, _ = load_artefact(a)
    tb, _ = load_artefact(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.allclose(ta[k], tb[k], atol=1e-6), k
    with pytest.raises(PrestoError, match="sample_rate"):
        load_recipe("recipes/tiny/autoencoder.yaml", ["data.sample_rate=22050"])


def test_autoencoder_export_measures_the_held_out_split_when_the_corpus_has_one(tmp_path):
    from presto_cli.train.loop import run_stage

    data = tmp_path / "data"
    _write_folder(data, n_files=4, heldout=2)
    recipe = load_recipe("recipes/tiny/autoencoder.yaml",
                         [f"data.path={data}", "data.val_fraction=0.3", "train.steps=2"])
    run_stage(recipe, tmp_path / "a", progress=False)
    report = json.loads((tmp_path / "a" / "recon.json").read_text())["recon"]
    assert report["split"] == "heldout" and report["clips"] == 1


def test_recipes_load():
    for name in ("tiny", "demo", "paper"):
        r = load_recipe(f"recipes/{name}/autoencoder.yaml")
        codec = build_codec(r.model)
        assert codec.sample_rate == r.data.sample_rate
    paper = build_codec(load_recipe("recipes/paper/autoencoder.yaml").model)
    assert paper.channels == 128 and paper.hop == 512 and paper.sample_rate == 44100  # 86.1 frames/s
    demo = build_codec(load_recipe("recipes/demo/autoencoder.yaml").model)
    assert demo.channels == 128 and demo.hop == 256  # 128 mel bins at 62.5 frames/s


def test_codec_recipe_section_is_checked_against_its_kind():
    with pytest.raises(PrestoError, match="n_mels"):  # a mel key on the STFT-VAE
        load_recipe("recipes/tiny/autoencoder.yaml", ["model.n_mels=64"])
    with pytest.raises(PrestoError, match="did you mean 'n_mels'"):
        load_recipe("recipes/demo/autoencoder.yaml", ["model.n_mel=64"])
    with pytest.raises(PrestoError, match="unknown codec kind"):
        load_recipe("recipes/demo/autoencoder.yaml", ["model.kind=wavenet"])


def test_adversarial_objectives_and_stage_option(tmp_path):
    from presto_cli.codec.losses import (MultiResolutionDiscriminator, discriminator_loss,
                                         feature_matching_loss, generator_adv_loss)
    from presto_cli.train.loop import run_stage

    def out(v):
        return [(torch.full((2, 1, 4, 4), v), [torch.full((2, 3), v)])]

    assert float(discriminator_loss(out(2.0), out(-2.0), "hinge")) == 0.0  # separated by the margin
    assert float(discriminator_loss(out(0.0), out(0.0), "hinge")) == pytest.approx(2.0)
    assert float(discriminator_loss(out(1.0), out(0.0), "ls")) == 0.0
    assert float(generator_adv_loss(out(0.5), "hinge")) == pytest.approx(-0.5)
    assert float(generator_adv_loss(out(1.0), "ls")) == 0.0
    assert float(feature_matching_loss(out(1.0), out(1.0))) == 0.0
    d = MultiResolutionDiscriminator((256, 128), channels=4)
    logits = d(torch.randn(2, 1, 2048))
    assert len(logits) == 2 and logits[0][0].shape[0] == 2

    data = tmp_path / "data"
    _write_folder(data, n_files=2, heldout=None)
    r = load_recipe("recipes/tiny/autoencoder.yaml",
                    [f"data.path={data}", "train.steps=2", "loss.adversarial_weight=0.5",
                     "loss.disc_sizes=[256,128]", "loss.disc_channels=4"])
    run_stage(r, tmp_path / "run", progress=False)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"d_loss", "g_adv", "fm"} <= rows[-1].keys()
    ck = torch.load(next((tmp_path / "run" / "checkpoints").glob("*.pt")), weights_only=True)
    assert "disc" in ck["task"] and "opt_d" in ck["task"]
