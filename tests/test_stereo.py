"""Stereo on request: ``model.audio_channels: 2`` in a mel-vocos codec recipe keeps audio stereo
through loading, the codec (each channel its own log-mel, stacked along the latent channels, one
vocoder) and `presto generate`; mono stays the default; eval embedders hear the mono downmix."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import ROOT, presto


def _codec(audio_channels):
    from presto_cli.codec import build_codec
    from presto_cli.seeds import seeded

    with seeded(0, "test", "stereo-codec"):
        return build_codec(dict(kind="mel-vocos", sample_rate=16000, n_fft=256, hop_length=64, n_mels=16,
                                width=8, depth=1, audio_channels=audio_channels)).eval()


def test_stereo_codec_is_two_mono_codecs_side_by_side():
    """Left's latents are the mono codec's latents of the left channel, right's of the right
    (same weights); decoding gives back [left, right] in that order; mono is the default."""
    stereo, mono = _codec(2), _codec(1)
    mono.load_state_dict(stereo.state_dict())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 1280, generator=g) * 0.1
    x[:, 1] *= 0.2  # a quieter right channel: the two differ
    with torch.no_grad():
        mono.mel_mean.copy_(torch.linspace(-1, 1, 16))
        stereo.mel_mean.copy_(mono.mel_mean)
        z = stereo.encode(x)
        zl, zr = mono.encode(x[:, :1]), mono.encode(x[:, 1:])
        assert z.shape == (2, 32, 20) and stereo.channels == 32 and mono.channels == 16
        assert torch.allclose(z[:, :16], zl) and torch.allclose(z[:, 16:], zr)
        y = stereo.decode(z)
        assert y.shape == (2, 2, 1280)
        assert torch.allclose(y[:, 0], mono.decode(zl)[:, 0], atol=1e-5)
        assert torch.allclose(y[:, 1], mono.decode(zr)[:, 0], atol=1e-5)
    assert _codec(1).audio_channels == 1 and build_default_is_mono()
    with pytest.raises(Exception, match="2-channel audio"):
        stereo.encode(x[:, :1])


def build_default_is_mono():
    from presto_cli.codec.mel import MelCodecConfig

    return MelCodecConfig().audio_channels == 1


def test_load_audio_channels(tmp_path):
    from presto_cli.audio import load_audio

    t = np.arange(1600) / 16000
    st = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 660 * t)], 1).astype(np.float32)
    sf.write(tmp_path / "st.wav", st, 16000, subtype="FLOAT")
    sf.write(tmp_path / "mono.wav", st[:, 0], 16000, subtype="FLOAT")
    a = load_audio(tmp_path / "st.wav", 16000, channels=2)
    assert a.shape == (2, 1600) and np.allclose(a.numpy(), st.T, atol=1e-6)
    assert np.allclose(load_audio(tmp_path / "st.wav", 16000).numpy(), st.mean(1)[None], atol=1e-6)  # default: mono
    m = load_audio(tmp_path / "mono.wav", 16000, channels=2)
    assert m.shape == (2, 1600) and torch.equal(m[0], m[1])


@pytest.mark.slow
def test_stereo_end_to_end(tmp_path):
    """A stereo corpus -> a stereo codec -> a teacher on its 2 x n_mels latents -> `generate`
    writes a 2-channel file whose channels differ; eval notes the downmix."""
    from presto_cli.io import read_artefact_meta

    data = tmp_path / "st"
    data.mkdir()
    t = np.arange(24000) / 16000
    for i in range(3):
        f = 220 * 2 ** (i / 12)
        x = np.stack([np.sin(2 * np.pi * f * t), 0.3 * np.sin(2 * np.pi * 1.5 * f * t)], 1) * 0.4
        sf.write(data / f"tone_{i}.wav", x.astype(np.float32), 16000)
        (data / f"tone_{i}.txt").write_text(f"a stereo tone number {i}")
    presto("data", "prepare", data)
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    assert all(r["channels"] == 2 for r in rows)
    presto("pretrain", ROOT / "recipes/demo/autoencoder.yaml", f"data.path={data}", "model.audio_channels=2",
           "model.width=8", "model.depth=1", "train.steps=2", "train.batch_size=2", "export.stats_clips=3",
           "export.eval_clips=2", "export.eval_seconds=1.0", "--out", tmp_path / "ae")
    codec = tmp_path / "ae" / "model.safetensors"
    meta = read_artefact_meta(codec)
    assert meta["audio_channels"] == 2 and meta["channels"] == 256
    presto("pretrain", ROOT / "recipes/tiny/teacher.yaml", f"data.path={data}", f"data.codec={codec}",
           "data.clip_seconds=1.0", "model.in_channels=0", "model.max_frames=0", "train.steps=2",
           "train.batch_size=2", "--out", tmp_path / "t")
    out = tmp_path / "st.wav"
    presto("generate", "a stereo tone", "--model", tmp_path / "t", "-o", out, "--seed", 0, "--steps", 2,
           "--duration", 0.5)
    y, sr = sf.read(str(out), always_2d=True)
    side = json.loads(out.with_suffix(".wav.json").read_text())
    assert sr == 16000 and y.shape[1] == 2 and side["channels"] == 2
    assert np.abs(y[:, 0] - y[:, 1]).max() > 1e-3 and np.abs(y).max() > 0
    r = presto("eval", "--gen", tmp_path, "--ref", data, "--embedder", "mel", "--metrics", "fad",
               "--no-cache", "--json")
    notes = json.loads(r.stdout)["systems"][0]["notes"]
    assert any("mono downmix" in n for n in notes), notes
