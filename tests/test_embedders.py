"""Embedders: mel determinism and content, the cache, LAION-CLAP windowing through a stand-in
``laion_clap`` module (the real package is not installed in CI), and presto-clap trained briefly
on a toy audio/text set."""
from __future__ import annotations

import importlib.abc
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from presto_cli.audio import write_audio
from presto_cli.errors import PrestoError
from presto_cli.eval import embedders as E
from presto_cli.eval import metrics as M

SR = 16000


def tone(freq: float, seconds: float = 1.0, sr: int = SR, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    return (amp * torch.sin(2 * math.pi * freq * t)).float()[None]


# ------------------------------------------------------------------------------------------ mel

def test_mel_embedder_is_deterministic_and_sees_pitch():
    e1, e2 = E.MelEmbedder(), E.MelEmbedder()
    clips = [tone(440.0), tone(2000.0)]
    a, b = e1.embed_audio(clips), e2.embed_audio(clips)
    assert a.shape == (2, 128) and np.array_equal(a, b)
    fb = E.mel_filterbank(SR, 1024, 64)
    centres = np.fft.rfftfreq(1024, 1 / SR)[fb.argmax(axis=1)]
    for row, f in zip(a, (440.0, 2000.0)):  # the loudest mean band is the one centred on the tone
        assert abs(centres[row[:64].argmax()] - f) <= 60.0
    assert e1.version == e2.version and "mel-v1" in e1.version


def test_mel_filterbank_and_windows():
    fb = E.mel_filterbank(16000, 512, 40)
    assert fb.shape == (40, 257) and fb.max() <= 1.0 + 1e-12 and (fb.sum(axis=1) > 0).all()
    W = 480000
    assert E.window_starts(int(25 * 48000), W) == [0, 360000, 720000]  # 0 s, 7.5 s, 15 s
    assert E.window_starts(2 * W, W) == [0, W]
    assert E.window_starts(1000, W) == [0]
    x = np.arange(1, 4, dtype=np.float32)
    assert E.repeat_pad(x, 8).tolist() == [1, 2, 3, 1, 2, 3, 0, 0]


def test_embedding_cache_hits_and_invalidates(tmp_path):
    f1, f2 = tmp_path / "a.wav", tmp_path / "b.wav"
    write_audio(f1, tone(300.0), SR)
    write_audio(f2, tone(900.0), SR)
    cache = E.EmbeddingCache(tmp_path / "cache")
    emb = E.MelEmbedder()
    first = emb.embed_audio([f1, f2], cache)
    assert cache.misses == 2 and cache.hits == 0
    again = emb.embed_audio([f1, f2], cache)
    assert cache.hits == 2 and np.allclose(first, again, atol=1e-5)
    write_audio(f1, tone(5000.0), SR)  # new content, new mtime/size -> recomputed
    os.utime(f1, ns=(1, 1))
    third = emb.embed_audio([f1, f2], cache)
    assert cache.hits == 3 and not np.allclose(third[0], first[0], atol=1e-3)
    # a different embedder version never reads another's entries
    other = E.MelEmbedder(n_mels=32)
    assert cache.get(other.version, f2) is None


def test_embed_files_skips_corrupt(tmp_path):
    good = tmp_path / "good.wav"
    write_audio(good, tone(300.0), SR)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00not really a wave file")
    emb, idx, errors = E.MelEmbedder().embed_files([good, bad, good])
    assert emb.shape == (2, 128) and idx == [0, 2]
    assert len(errors) == 1 and errors[0][0] == str(bad) and "bad.wav" in errors[0][1]
    with pytest.raises(PrestoError):
        E.MelEmbedder().embed_audio([bad])


def test_build_embedder_names():
    assert isinstance(E.build_embedder("mel"), E.MelEmbedder)
    with pytest.raises(PrestoError, match="did you mean 'mel'"):
        E.build_embedder("mell")


# ------------------------------------------------------------------------------------------ LAION-CLAP via a stand-in

class _FakeNet(torch.nn.Module):
    """A small randomly initialised network with the real module's methods."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.audio = torch.nn.Linear(64, 512)
        self.text = torch.nn.Embedding(1000, 512)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))


def _make_fake_laion(calls: list):
    mod = types.ModuleType("laion_clap")
    mod.__version__ = "fake"

    class CLAP_Module(torch.nn.Module):
        def __init__(self, enable_fusion=False, device=None, amodel="HTSAT-tiny", tmodel="roberta"):
            super().__init__()
            calls.append(("init", amodel, enable_fusion))
            self.model = _FakeNet()
            self.model.audio.weight.data.zero_()  # only a loaded checkpoint makes it useful

        def load_ckpt(self, ckpt=None, model_id=-1, verbose=True):
            raise AssertionError("presto loads the weights itself (weights_only=True)")

        def get_audio_embedding_from_data(self, x, use_tensor=False):
            x = np.asarray(x)
            calls.append(("audio", x.shape))
            assert x.ndim == 2 and x.shape[1] == 480000, "every window must be exactly 10 s"
            feats = torch.from_numpy(np.abs(x).reshape(x.shape[0], 64, -1).mean(-1)).float()
            e = torch.nn.functional.normalize(self.model.audio(feats), dim=-1)
            return e if use_tensor else e.detach().numpy()

        def get_text_embedding(self, x, tokenizer=None, use_tensor=False):
            calls.append(("text", len(x)))
            assert len(x) > 1, "the real package fails on a batch of one"
            ids = torch.tensor([sum(map(ord, t)) % 1000 for t in x])
            e = torch.nn.functional.normalize(self.model.text(ids), dim=-1)
            return e if use_tensor else e.detach().numpy()

    mod.CLAP_Module = CLAP_Module
    return mod


@pytest.fixture
def fake_laion(monkeypatch, tmp_path):
    calls: list = []
    mod = _make_fake_laion(calls)
    monkeypatch.setitem(sys.modules, "laion_clap", mod)
    ref = _FakeNet()
    ckpt = tmp_path / "music_audioset_epoch_15_esc_90.14.pt"
    torch.save({"epoch": 15, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, ckpt)
    monkeypatch.delenv("PRESTO_CLAP_CKPT", raising=False)
    return calls, ckpt, ref


def _fake_window_embedding(ref: _FakeNet, x: np.ndarray) -> np.ndarray:
    feats = torch.from_numpy(np.abs(x).reshape(64, -1).mean(-1)).float()
    return torch.nn.functional.normalize(ref.audio(feats), dim=-1).detach().double().numpy()


def test_laion_clap_windows_average_and_determinism(fake_laion):
    calls, ckpt, ref = fake_laion
    emb = E.build_embedder("clap", clap_ckpt=ckpt, device="cpu")
    assert emb.sample_rate == 48000 and emb.dim == 512 and calls[0] == ("init", "HTSAT-base", False)
    W = 480000
    rng = np.random.default_rng(0)
    a = (0.1 * rng.standard_normal(W)).astype(np.float32)
    b = (0.5 * rng.standard_normal(W)).astype(np.float32)
    short = (0.3 * rng.standard_normal(3 * 48000)).astype(np.float32)
    clips = [torch.from_numpy(np.concatenate([a, b]))[None], torch.from_numpy(short)[None]]
    out = emb.embed_audio(clips)
    want0 = _fake_window_embedding(ref, a) + _fake_window_embedding(ref, b)
    assert np.allclose(out[0], want0 / np.linalg.norm(want0), atol=1e-5)  # two windows averaged
    want1 = _fake_window_embedding(ref, E.repeat_pad(short, W))
    assert np.allclose(out[1], want1, atol=1e-5)  # one repeat-padded window
    assert np.array_equal(out, emb.embed_audio(clips))  # no random crop: identical twice
    # a 25 s clip makes 3 windows (0, 7.5, 15 s)
    n_before = sum(c[1][0] for c in calls if c[0] == "audio")
    emb.embed_audio([torch.zeros(1, 25 * 48000)])
    assert sum(c[1][0] for c in calls if c[0] == "audio") - n_before == 3
    t = emb.embed_text(["solo piano"])
    assert t.shape == (1, 512) and np.allclose(np.linalg.norm(t, axis=1), 1.0)
    assert "laion-clap-music" in emb.version and ckpt.name in emb.version


def test_laion_clap_weights_are_loaded(fake_laion, tmp_path):
    _, ckpt, ref = fake_laion
    emb = E.LaionClapEmbedder(ckpt, device="cpu")
    assert torch.equal(emb.model.model.audio.weight, ref.audio.weight)
    bad = tmp_path / "other.pt"
    torch.save({"state_dict": {"something.else": torch.zeros(2)}}, bad)
    with pytest.raises(PrestoError, match="does not match"):
        E.LaionClapEmbedder(bad, device="cpu")


def _one_line(e: PrestoError) -> str:
    s = str(e)
    assert "\n" not in s
    return s


def test_laion_clap_missing_checkpoint(fake_laion, tmp_path):
    with pytest.raises(PrestoError) as ei:
        E.build_embedder("clap")
    s = _one_line(ei.value)
    assert "--clap-ckpt" in s and "PRESTO_CLAP_CKPT" in s
    with pytest.raises(PrestoError, match="not found"):
        E.build_embedder("clap", clap_ckpt=tmp_path / "nope.pt")


def test_laion_clap_missing_package(monkeypatch, tmp_path):
    ck = tmp_path / "c.pt"
    ck.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "laion_clap", None)  # import fails like an absent package
    with pytest.raises(PrestoError) as ei:
        E.LaionClapEmbedder(ck)
    assert "pip install presto-music[clap]" in _one_line(ei.value)


def test_laion_clap_missing_torchvision(monkeypatch, tmp_path):
    ck = tmp_path / "c.pt"
    ck.write_bytes(b"x")

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "laion_clap":
                raise ModuleNotFoundError("No module named 'torchvision'", name="torchvision")
            return None

    monkeypatch.delitem(sys.modules, "laion_clap", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Finder()] + sys.meta_path)
    with pytest.raises(PrestoError) as ei:
        E.LaionClapEmbedder(ck)
    s = _one_line(ei.value)
    assert "torchvision" in s and "presto-music[clap]" in s


def test_laion_clap_offline_roberta(fake_laion, monkeypatch):
    _, ckpt, _ = fake_laion

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't "
                      "find them in the cached files.\nCheck your connection (roberta-base).")

    monkeypatch.setattr(sys.modules["laion_clap"], "CLAP_Module", offline)
    with pytest.raises(PrestoError) as ei:
        E.LaionClapEmbedder(ckpt)
    s = _one_line(ei.value)
    assert "roberta-base" in s and "HF" in s


# ------------------------------------------------------------------------------------------ presto-clap

TOY_SR = 8000
TOY_CLASSES = ("low sine tone", "high sine tone", "white noise hiss", "rhythmic clicks")


def toy_clip(cls: int, g: torch.Generator, seconds: float = 0.5) -> torch.Tensor:
    n = int(seconds * TOY_SR)
    t = torch.arange(n) / TOY_SR
    u = torch.rand(3, generator=g)
    amp = 0.2 + 0.6 * u[0]
    if cls == 0:
        x = torch.sin(2 * math.pi * (150 + 150 * u[1]) * t + 6.28 * u[2])
    elif cls == 1:
        x = torch.sin(2 * math.pi * (1800 + 1200 * u[1]) * t + 6.28 * u[2])
    elif cls == 2:
        x = torch.randn(n, generator=g) * 0.5
    else:
        x = torch.zeros(n)
        period = int(TOY_SR / (4 + 8 * u[1]))
        x[int(u[2] * period)::period] = 1.0
    return (amp * x)[None].float()


class ToyDataset:
    def __init__(self, n: int = 64):
        self.n = n

    def __len__(self):
        return self.n

    def getitem(self, index: int, rng: torch.Generator) -> dict:
        cls = index % len(TOY_CLASSES)
        return {"audio": toy_clip(cls, rng), "caption": TOY_CLASSES[cls], "path": f"toy{index}"}


def _toy_recipe(tmp_path, steps: int):
    from presto_cli.recipes import load_recipe

    return load_recipe(Path(__file__).resolve().parents[1] / "recipes/tiny/clap.yaml",
                       [f"train.steps={steps}", "data.sample_rate=8000", "data.clip_seconds=0.5",
                        "data.path=toy", "train.device=cpu"])


def test_presto_clap_learns_toy_alignment(tmp_path, monkeypatch):
    from presto_cli.eval.clap_model import load_clap
    from presto_cli.stages.clap import ClapTask
    from presto_cli.train.loop import run_stage

    monkeypatch.setattr(ClapTask, "make_dataset", lambda self: ToyDataset())
    recipe = _toy_recipe(tmp_path, steps=60)
    art = run_stage(recipe, tmp_path / "run", progress=False)
    _, meta = load_clap(art)
    assert meta["kind"] == "clap" and meta["name"] == "presto-clap"

    # held-out clips written to disk, embedded through the evaluation embedder
    g = torch.Generator().manual_seed(1234)
    files, labels = [], []
    for i in range(24):
        c = i % 4
        f = tmp_path / "eval" / f"{i:02d}.wav"
        write_audio(f, toy_clip(c, g), TOY_SR)
        files.append(f)
        labels.append(c)
    emb = E.build_embedder("presto-clap", clap_ckpt=art, device="cpu")
    assert emb.name == "presto-clap" and emb.sample_rate == TOY_SR
    audio = emb.embed_audio(files)
    text = emb.embed_text([TOY_CLASSES[c] for c in labels])
    shuffled = emb.embed_text([TOY_CLASSES[(c + 1) % 4] for c in labels])
    aligned_score, shuffled_score = M.clap_score(text, audio), M.clap_score(shuffled, audio)
    adher = M.prompt_adherence(audio, emb.embed_text(list(TOY_CLASSES)), labels)

    # the same measurement on the untrained model (0 steps): no alignment to speak of
    recipe0 = _toy_recipe(tmp_path, steps=1)
    recipe0.train.lr = 0.0
    art0 = run_stage(recipe0, tmp_path / "run0", progress=False)
    emb0 = E.build_embedder("presto-clap", clap_ckpt=art0, device="cpu")
    a0 = emb0.embed_audio(files)
    gap0 = M.clap_score(emb0.embed_text([TOY_CLASSES[c] for c in labels]), a0) - \
        M.clap_score(emb0.embed_text([TOY_CLASSES[(c + 1) % 4] for c in labels]), a0)
    print("presto-clap toy:", aligned_score, shuffled_score, gap0, adher)
    assert aligned_score - shuffled_score > 0.3, (aligned_score, shuffled_score)
    assert aligned_score - shuffled_score > gap0 + 0.25, (aligned_score - shuffled_score, gap0)
    assert adher >= 0.9, adher
