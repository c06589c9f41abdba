"""The 2-D output head (models/dit.py Head2D, METHOD.md section 2 "Output capacity"): it lifts the
per-token bottleneck, starts exactly at the network it is added to, and `init` accepts a trained
teacher without it (only the head's weights may be missing)."""
import copy

import pytest
import torch

from presto_cli.diffusion.edm import EDMConfig, EDMDenoiser, edm_loss
from presto_cli.errors import PrestoError
from presto_cli.io import load_state_strict
from presto_cli.models.dit import DiT, DiTConfig, estimate_flops, estimate_params, init_compatible

BASE = dict(in_channels=8, width=16, depth=2, heads=2, patch=4, max_frames=32, noise_embed_dim=16)


def _net(seed=0, **kw) -> DiT:
    torch.manual_seed(seed)
    return DiT(DiTConfig(**{**BASE, **kw}))


def _inputs(b=3, f=30, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 8, f, generator=g), torch.randn(b, generator=g),
            torch.randn(b, 5, 384, generator=g), torch.ones(b, 5, dtype=torch.bool),
            torch.randn(b, 384, generator=g))


@pytest.mark.parametrize("kw", [dict(head2d=8), dict(head2d=8, head2d_mel_stride=2, head2d_separable=True,
                                                       head2d_layers=3, head2d_bands=4, head2d_maps=3),
                                dict(head2d=4, patch=1), dict(head2d=4, patch=2, out_refine=6)])
def test_head_is_counted_exactly_and_runs_any_length(kw):
    net = _net(**kw)
    assert estimate_params(net.cfg) == net.num_params()
    assert estimate_flops(net.cfg, 30) > estimate_flops(DiTConfig(**{**BASE, "patch": net.cfg.patch}), 30)
    for f in (1, 7, 30):  # lengths that are not a multiple of the patch
        x, c, tok, mask, pooled = _inputs(f=f)
        assert net(x, c, tok, mask, pooled).shape == (3, 8, f)


@torch.no_grad()
def test_a_trained_network_plus_a_new_head_computes_what_it_computed():
    old = _net(seed=3)
    with torch.no_grad():  # a "trained" network: off its zero-initialised output map
        for p in old.parameters():
            p.add_(0.1 * torch.randn_like(p))
    new = _net(seed=4, head2d=8)
    bad, allowed = init_compatible({k: v for k, v in vars(old.cfg).items() if not k.startswith("head2d")},
                                   new.cfg)
    assert bad == [] and allowed == ("head2d.",)
    load_state_strict(new, old.state_dict(), "test", allow_missing=allowed)
    args = _inputs()
    torch.testing.assert_close(new(*args), old(*args))
    # once the head's projection moves, the output moves
    new.head2d.proj.bias.fill_(0.5)
    assert (new(*args) - old(*args)).abs().min() > 0.4


def test_init_refuses_every_other_difference_and_missing_non_head_weights():
    old = _net()
    src = dict(vars(old.cfg))
    bad, _ = init_compatible(src, DiTConfig(**{**BASE, "width": 32, "head2d": 8}))
    assert bad and "width" in bad[0]
    # a source that already has a head: its shape keys must agree
    bad, allowed = init_compatible({**src, "head2d": 8}, DiTConfig(**{**BASE, "head2d": 16}))
    assert bad and allowed == ()
    new = _net(head2d=8)
    sd = {k: v for k, v in old.state_dict().items() if not k.startswith("out.")}
    with pytest.raises(PrestoError, match="missing"):
        load_state_strict(new, sd, "test", allow_missing=("head2d.",))
    # files written before the head existed lack its keys: they take the defaults (no head)
    assert init_compatible({k: v for k, v in src.items() if not k.startswith("head2d")},
                           DiTConfig(**BASE)) == ([], ())


def _excess_loss(**kw) -> float:
    """Latents with i.i.d. N(0, 1) elements (no structure at all), denoised at sigma = 0.5: the
    optimal denoiser is D = x / (1 + sigma^2) = 0.8 x element by element (closed form, METHOD.md
    section 7), loss lambda * 0.2 = 1.6; the untrained network gives D = c_skip x = 0.5 x, loss
    lambda * 0.3125 = 2.5. Returns the share of that gap left after training. A token of patch 4 x 8
    channels = 32 values leaves the transformer through width 8: a linear head can correct at most
    8 of the 32 dimensions, so at least 3/4 of the gap stays; a head that sees every element can
    close it."""
    torch.manual_seed(0)
    net = DiT(DiTConfig(in_channels=8, width=8, depth=1, heads=2, patch=4, max_frames=32,
                        noise_embed_dim=16, cross_attn=False, **kw))
    den = EDMDenoiser(net, EDMConfig(sigma_data=0.5))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(250):
        x0 = torch.randn(32, 8, 32, generator=g)
        loss = edm_loss(den, x0, torch.full((32,), 0.5), torch.randn(32, 8, 32, generator=g), None).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x0 = torch.randn(256, 8, 32, generator=g)
        loss = float(edm_loss(den, x0, torch.full((256,), 0.5), torch.randn(256, 8, 32, generator=g), None).mean())
    return (loss - 1.6) / (2.5 - 1.6)


def test_the_2d_head_lifts_the_per_token_bottleneck():
    plain, head = _excess_loss(), _excess_loss(head2d=8)
    assert plain > 0.7, plain  # the bound: >= 0.75 of the gap, however long it trains
    assert head < 0.15, head


def test_teacher_stage_continues_an_exported_teacher_with_a_new_head(tmp_path):
    """`init` + `model.head2d`: the new network computes exactly the exported teacher's output
    before training; the head trains at head_lr_mult times the rate; sigma_mix_edm is validated."""
    from pathlib import Path

    from presto_cli.diffusion.artefact import load_teacher
    from presto_cli.recipes import load_recipe
    from presto_cli.train.loop import build_task, run_stage

    tiny = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "teacher.yaml"
    common = ["train.steps=4", "train.log_every=2", "train.batch_size=16", "train.ckpt_every=4"]
    run_stage(load_recipe(tiny, common), tmp_path / "t", progress=False)
    exported = tmp_path / "t" / "model.safetensors"
    over = [*common, f"init={exported}", "model.head2d=4", "model.head2d_bands=2",
            "head_lr_mult=3.0", "sigma_mix_edm=0.5"]
    task = build_task(load_recipe(tiny, over), tmp_path / "h", torch.device("cpu"))
    old = load_teacher(exported)[0].net.eval()
    new = task.net.eval()
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(5, 2, 1, generator=g), torch.randn(5, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(new(x, c), old(x, c))
    mults = sorted(grp["lr_mult"] for grp in task.opt.param_groups)
    assert mults == [1.0, 3.0]
    head = next(grp for grp in task.opt.param_groups if grp["lr_mult"] == 3.0)
    assert {id(p) for p in head["params"]} == {id(p) for p in new.head2d.parameters()}
    # the tempo/key layers get their own rate too (cond_lr_mult), and set_lr keeps every multiplier
    from presto_cli.train.loop import set_lr

    tk = build_task(load_recipe(tiny, [*over, "model.tempo_cond=true", "model.key_cond=true",
                                       "cond_lr_mult=10"]), tmp_path / "k", torch.device("cpu"))
    set_lr(tk.opt, 1e-3)
    by = {grp["lr_mult"]: grp for grp in tk.opt.param_groups}
    assert sorted(by) == [1.0, 3.0, 10.0] and by[10.0]["lr"] == pytest.approx(1e-2)
    assert {id(p) for p in by[10.0]["params"]} == {id(p) for n, p in tk.net.named_parameters()
                                                    if n.startswith(("tempo_embed.", "key_embed."))}
    with pytest.raises(PrestoError, match="sigma_mix_edm"):
        load_recipe(tiny, [*over, "sigma_mix_edm=1.5"]).validate()


def test_token_shift_cycles_the_grid_and_removes_a_drawn_one():
    """edm.token_shifted: call k runs the function on x padded with k mod patch frames in front
    and drops them; a model that draws a step at its token edges leaves a grid at fixed frames
    without the shift and none with it."""
    from presto_cli.diffusion.edm import token_shifted
    from presto_cli.diffusion.samplers import get_sigmas, sample_euler
    from presto_cli.eval.texture import set_texture

    seen = []

    def grid_model(x, sigma):  # "denoises" to a level that jumps at every 4th frame of its input
        seen.append(x.shape[-1])
        t = torch.arange(x.shape[-1])
        return 0.3 * x + 4.0 * ((t // 4) % 2).float()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 37, generator=g)
    fn = token_shifted(grid_model, 4)
    for k in range(6):
        out = fn(x, torch.ones(2))
        torch.testing.assert_close(out, grid_model(torch.nn.functional.pad(x, (k % 4, 0)), None)[..., k % 4:])
    assert seen[-12::2] == [37, 38, 39, 40, 37, 38]
    assert token_shifted(grid_model, 1) is grid_model
    sigmas = get_sigmas("euler", 12, 0.002, 80.0, 7.0)
    plain = sample_euler(grid_model, 80.0 * torch.randn(4, 6, 40, generator=g), sigmas, disable=True)
    shifted = sample_euler(token_shifted(grid_model, 4), 80.0 * torch.randn(4, 6, 40, generator=g), sigmas,
                           disable=True)
    assert set_texture(plain.numpy(), patch=4)["boundary_ratio"] > 2.0
    assert set_texture(shifted.numpy(), patch=4)["boundary_ratio"] < 1.3


@torch.no_grad()
def test_distill_init_from_a_generator_of_an_earlier_teacher_takes_the_new_parts_from_the_teacher():
    """`distill.init` with a generator distilled before the teacher gained its 2-D head: the
    generator's weights wherever it has them, the teacher's for the head (stages/presto_s.py
    warm_start); any other difference is refused."""
    from presto_cli.stages.presto_s import warm_start

    edm = EDMConfig()
    old = _net(seed=3)
    teacher = _net(seed=4, head2d=8)
    for p in list(old.parameters()) + list(teacher.parameters()):
        p.add_(0.1 * torch.randn_like(p))
    warm = warm_start(EDMDenoiser(old, edm), EDMDenoiser(teacher, edm), "gen.safetensors")
    got, own, tea = warm.net.state_dict(), old.state_dict(), teacher.state_dict()
    assert set(got) == set(tea)
    for k, v in got.items():
        torch.testing.assert_close(v, tea[k] if k.startswith("head2d.") else own[k], rtol=0, atol=0)
    # with the head's projection at zero it computes exactly what the old generator computed
    warm.net.head2d.proj.weight.zero_()
    warm.net.head2d.proj.bias.zero_()
    args = _inputs()
    torch.testing.assert_close(warm.net(*args), old(*args))
    # the same network: the generator itself
    same = EDMDenoiser(_net(seed=5, head2d=8), edm)
    assert warm_start(same, EDMDenoiser(teacher, edm), "g") is same
    # a generator with a part the teacher lacks, or another width: one clear error
    with pytest.raises(PrestoError, match="not the same network"):
        warm_start(EDMDenoiser(teacher, edm), EDMDenoiser(old, edm), "g")
    with pytest.raises(PrestoError, match="width"):
        warm_start(EDMDenoiser(_net(width=32), edm), EDMDenoiser(teacher, edm), "g")
    with pytest.raises(PrestoError, match="pooled_only: False -> True"):  # reads the text otherwise
        warm_start(EDMDenoiser(_net(head2d=8), edm), EDMDenoiser(_net(head2d=8, pooled_only=True), edm), "g")
