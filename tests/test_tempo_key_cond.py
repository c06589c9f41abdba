"""Tempo and key as DiT conditions (DiTConfig.tempo_cond / key_cond): zero-initialised, carried by
Cond through index/cat/CFG, dropped by CFG's null condition and by condition dropout, learned on a
toy whose answer depends only on them, and added to an older checkpoint without changing it."""
import json
import math

import pytest
import torch

from presto_cli.diffusion.edm import Cond, EDMConfig, EDMDenoiser, drop_condition, drop_musical, edm_loss
from presto_cli.errors import PrestoError
from presto_cli.models.dit import DiT, DiTConfig, estimate_params
from presto_cli.seeds import seeded
from toy import perturb, toy_text

NAN = float("nan")
BASE = dict(in_channels=2, width=32, depth=2, heads=2, text_dim=8, max_frames=4, noise_embed_dim=16)


def make(seed=0, **kw):
    with seeded(seed, "test-tempo-key"):
        return DiT(DiTConfig(**{**BASE, **kw}))




@torch.no_grad()
def test_zero_init_is_the_model_without_them_and_parameters_are_counted():
    """At initialisation a tempo/key model given the weights of one without them (the new layers
    left at their init) computes exactly the same function, whatever tempo and key it is given."""
    old = make(0)
    new = make(5, tempo_cond=True, key_cond=True)
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith(("tempo_embed.", "key_embed.")) for k in missing)
    perturb(old, ("blocks", "final_ada", "out"))  # off the adaLN-zero init, so the condition matters
    new.load_state_dict(old.state_dict(), strict=False)
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(4, 2, 4, generator=g), torch.randn(4, generator=g)
    tok, mask, pooled = toy_text(4)
    ref = old(x, c, tok, mask, pooled)
    out = new(x, c, tok, mask, pooled, tempo=torch.tensor([60., NAN, 140., 300.]), key=torch.tensor([0, 5, -1, 23]))
    assert float(ref.abs().max()) > 0.01 and torch.equal(out, ref)
    for kw in (dict(tempo_cond=True), dict(key_cond=True), dict(tempo_cond=True, key_cond=True)):
        cfg = DiTConfig(**{**BASE, **kw})
        assert estimate_params(cfg) == make(0, **kw).num_params()


@torch.no_grad()
def test_outputs_differ_by_tempo_and_key_and_absent_or_null_drops_them():
    net = make(0, tempo_cond=True, key_cond=True)
    perturb(net, ("blocks", "final_ada", "out", "tempo_embed", "key_embed"))
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(1, 2, 4, generator=g).expand(6, -1, -1), torch.randn(1, generator=g).expand(6)
    tok, mask, pooled = (t[:1].expand(6, *t.shape[1:]) for t in toy_text(1))
    tempo = torch.tensor([80., 81., 160., 80., 80., NAN])
    key = torch.tensor([4, 4, 4, 16, -1, -1])
    y = net(x, c, tok, mask, pooled, tempo=tempo, key=key)
    d = lambda i, j: float((y[i] - y[j]).abs().max())  # noqa: E731
    assert d(0, 2) > 1e-3 and d(0, 3) > 1e-3 and d(0, 4) > 1e-3 and d(0, 1) < d(0, 2)  # tempo and key move it
    # "absent" is one state: NaN, <= 0 and None for the tempo; -1 and None for the key
    y_none = net(x, c, tok, mask, pooled, tempo=None, key=None)
    y_zero = net(x, c, tok, mask, pooled, tempo=torch.zeros(6), key=torch.full((6,), -1))
    assert torch.allclose(y_none[5], y[5], atol=1e-6) and torch.allclose(y_zero, y_none, atol=1e-6)
    # CFG's null condition drops tempo and key with the text: identical whatever they were
    u = torch.ones(6, dtype=torch.bool)
    y_null = net(x, c, tok, mask, pooled, uncond=u, tempo=tempo, key=key)
    assert float((y_null - y_null[5:6]).abs().max()) < 1e-6
    assert torch.allclose(y_null, net(x, c, tok, mask, pooled, uncond=u), atol=1e-6)
    with pytest.raises(PrestoError, match="key indices"):
        net(x, c, tok, mask, pooled, key=torch.full((6,), 24))


def test_cond_index_cat_to_keep_tempo_and_key_aligned():
    tok, mask, pooled = toy_text(3)
    a = Cond(tok, mask, pooled, tempo=torch.tensor([90., NAN, 120.]), key=torch.tensor([1, 2, -1]))
    b = Cond(tok[:2, :2], mask[:2, :2], pooled[:2])  # no tempo/key at all
    cat = Cond.cat([a, b])
    assert cat.tempo[:3].tolist()[0::2] == [90., 120.] and torch.isnan(cat.tempo[[1, 3, 4]]).all()
    assert cat.key.tolist() == [1, 2, -1, -1, -1]
    assert torch.equal(cat.pooled[3], pooled[0]) and cat.tokens.shape == (5, 3, 8)
    idx = torch.tensor([2, 0])
    sub = a.index(idx)
    assert sub.tempo.tolist() == [120., 90.] and sub.key.tolist() == [-1, 1] and torch.equal(sub.pooled, pooled[idx])
    assert a.index(slice(1, 3)).key.tolist() == [2, -1]
    assert a.to("cpu").key.tolist() == [1, 2, -1] and a.with_uncond(torch.ones(3, dtype=torch.bool)).tempo is a.tempo
    assert Cond.cat([b, b]).tempo is None and Cond.cat([b, b]).key is None
    assert set(a.musical_kwargs()) == {"tempo", "key"} and b.musical_kwargs() == {}
    d = drop_condition(a, 0.5, torch.tensor([0.1, 0.9, 0.9]))  # CFG dropout keeps the values (the DiT drops them)
    assert d.uncond.tolist() == [True, False, False] and d.key is a.key


def test_condition_dropout_is_per_sample_and_independent():
    tok, mask, pooled = toy_text(4)
    a = Cond(tok, mask, pooled, tempo=torch.tensor([90., 100., 110., 120.]), key=torch.tensor([1, 2, 3, 4]))
    d = drop_musical(a, 0.3, torch.tensor([0.1, 0.5, 0.2, 0.9]), torch.tensor([0.9, 0.1, 0.5, 0.29]))
    assert torch.isnan(d.tempo).tolist() == [True, False, True, False]
    assert d.key.tolist() == [1, -1, 3, -1] and torch.equal(d.pooled, a.pooled)
    assert drop_musical(a, 0.0, torch.zeros(4), torch.zeros(4)) is a
    b = Cond(tok, mask, pooled)
    assert drop_musical(b, 0.5, torch.zeros(4), torch.zeros(4)) is b
    with pytest.raises(PrestoError, match="p_no_tempo_key"):
        EDMConfig(p_no_tempo_key=1.5).validate()


def _toy_targets(tempo: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """x0 [B, 2, 1]: channel 0 = +1 minor / -1 major, channel 1 linear in log tempo (-1 at 40, +1 at 200)."""
    minor = (key >= 12).float() * 2 - 1
    t = (torch.log(tempo / 40.0) / math.log(5.0)) * 2 - 1
    return torch.stack([minor, t], dim=1)[:, :, None]


def test_a_tiny_dit_learns_a_toy_whose_answer_is_the_tempo_and_key():
    """Known answer: the data is a deterministic function of (tempo, key) and the text is the same
    for every sample, so the optimal denoiser at any noise level returns that function. After 300
    steps the model's D at sigma 0.5-4 is within 0.2 of it (0.08 on average) on tempos it never saw,
    and given other samples' tempo and key it is far from it (the answer comes from the conditions)."""
    cfg = EDMConfig(p_uncond=0.0)
    g = torch.Generator().manual_seed(0)
    tok, mask, pooled = toy_text(1)
    net = make(0, in_channels=2, max_frames=1, tempo_cond=True, key_cond=True)
    den = EDMDenoiser(net, cfg)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    steps, b = 300, 64

    def cond(n, tempo, key):
        return Cond(tok.expand(n, -1, -1), mask.expand(n, -1), pooled.expand(n, -1), tempo=tempo, key=key)

    for i in range(steps):
        tempo = torch.exp(torch.empty(b).uniform_(math.log(40), math.log(200), generator=g))
        key = torch.randint(0, 24, (b,), generator=g)
        x0 = _toy_targets(tempo, key)
        sigma = torch.exp(torch.randn(b, generator=g) * 1.2 - 0.4)
        noise = torch.randn(x0.shape, generator=g)
        loss = edm_loss(den, x0, sigma, noise, cond(b, tempo, key)).mean()
        for group in opt.param_groups:
            group["lr"] = 5e-3 * (1 - i / steps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        tempo = torch.tensor([47., 63., 91., 117., 151., 183.] * 4)
        key = torch.tensor([0, 7, 12, 21, 4, 16] * 4)
        x0 = _toy_targets(tempo, key)
        sigma = torch.tensor([0.5, 1.0, 2.0, 4.0]).repeat_interleave(6)
        x = x0 + sigma[:, None, None] * torch.randn(x0.shape, generator=g)
        err = (den(x, sigma, cond(24, tempo, key)) - x0).abs()[:, :, 0]  # [24, (key, tempo)]
        perm = torch.tensor([3, 4, 5, 0, 1, 2]).repeat(4) + torch.arange(4).repeat_interleave(6) * 6
        wrong = (den(x, sigma, cond(24, tempo[perm], key[perm])) - x0).abs()[:, :, 0]
    assert float(err.max()) < 0.2 and float(err.mean(0).max()) < 0.08, err
    assert float(wrong.mean(0).min()) > 0.4, wrong


def test_latent_cache_items_carry_tempo_and_key_and_an_older_index_gets_them(tmp_path):
    """A cache index written before tempo/key were kept is given them from its manifest (once,
    atomically); LatentDataset items carry them as tensors (NaN / -1 when unknown)."""
    from safetensors.torch import save_file

    from presto_cli.data.latents import LatentDataset, _add_tempo_key

    manifest = tmp_path / "manifest.jsonl"
    rows = [{"path": "a.wav", "caption": "x", "labels": {"tempo": 120, "key": "E", "mode": "minor"}},
            {"path": "b.wav", "caption": "calm piano at 68 BPM"},
            {"path": "c.wav", "caption": "rain", "bpm": "92", "key": "Bb major"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "cache"
    cache.mkdir()
    save_file({"latents": torch.arange(4 * 2 * 3, dtype=torch.float32).view(4, 2, 3)}, str(cache / "shard_00000.safetensors"))
    old = [{"i": i, "shard": 0, "row": i, "path": p, "start": 0.0, "caption": "x", "split": "train"}
           for i, p in enumerate(["a.wav", "a.wav", "b.wav", "c.wav"])]
    (cache / "index.jsonl").write_text("".join(json.dumps(it) + "\n" for it in old))
    (cache / "cache.json").write_text(json.dumps({"version": 1, "channels": 2, "frames": 3, "frame_rate": 10.0,
                                                  "sample_rate": 16000}))
    _add_tempo_key(cache, manifest)
    index = [json.loads(l) for l in (cache / "index.jsonl").read_text().splitlines()]
    assert [(it["tempo"], it["key"]) for it in index] == [(120.0, 16), (120.0, 16), (68.0, None), (92.0, 10)]
    before = (cache / "index.jsonl").stat().st_mtime_ns
    _add_tempo_key(cache, manifest)  # a current index is left alone
    assert (cache / "index.jsonl").stat().st_mtime_ns == before
    ds = LatentDataset(cache)
    items = [ds[i] for i in range(4)]
    assert [float(it["tempo"]) for it in items[:2]] == [120.0, 120.0] and int(items[2]["key"]) == -1
    assert int(items[3]["key"]) == 10 and items[3]["key"].dtype == torch.long
    assert torch.equal(items[3]["latents"], torch.arange(18, 24, dtype=torch.float32).view(2, 3))
    from presto_cli.train.loop import collate

    batch = collate(items)
    assert batch["tempo"].shape == (4,) and batch["key"].tolist() == [16, 16, -1, 10]
    from presto_cli.text.cache import TextCache
    from presto_cli.text.encoders import build_text_encoder

    cond = TextCache(build_text_encoder("hash")).batch(batch, "cpu")  # what every training stage calls
    assert cond.key.tolist() == [16, 16, -1, 10] and cond.tempo[3] == 92.0
