"""DiT behaviour: layer subsets, hidden states, budget embedding, null condition, masks, sizes."""
import copy

import pytest
import torch

from presto_cli.diffusion.edm import EDMConfig, EDMDenoiser
from presto_cli.errors import PrestoError
from presto_cli.models.dit import DiT, DiTConfig, estimate_flops, estimate_params


def make(seed=0, perturb=True, **kw):
    base = dict(in_channels=4, width=32, depth=4, heads=4, max_frames=16, noise_embed_dim=32)
    base.update(kw)
    torch.manual_seed(seed)
    net = DiT(DiTConfig(**base))
    if perturb:  # move off the adaLN-zero / zero-output init so every path is exercised
        with torch.no_grad():
            for name, p in net.named_parameters():
                if not name.startswith(("budget_embed", "budget_scale")):
                    p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def inputs(b=3, c=4, f=9, n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, f, generator=g)
    c_noise = torch.randn(b, generator=g)
    tok = torch.randn(b, n, 384, generator=g)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, 3:] = False
    pooled = torch.randn(b, 384, generator=g)
    return x, c_noise, tok, mask, pooled


@torch.no_grad()
def test_block_subset_equals_shallower_network_with_those_blocks():
    net = make()
    args = inputs()
    keep = [0, 2, 3]
    sub_cfg = copy.deepcopy(net.cfg)
    sub_cfg.depth = len(keep)
    sub = DiT(sub_cfg).eval()
    sd = {k: v for k, v in net.state_dict().items() if not k.startswith("blocks.")}
    for j, i in enumerate(keep):
        for k, v in net.blocks[i].state_dict().items():
            sd[f"blocks.{j}.{k}"] = v
    sub.load_state_dict(sd)
    torch.testing.assert_close(net(*args, blocks=keep), sub(*args), rtol=1e-5, atol=1e-5)
    assert (net(*args, blocks=keep) - net(*args)).abs().max() > 1e-3  # dropping matters
    # order is respected
    assert (net(*args, blocks=[2, 0]) - net(*args, blocks=[0, 2])).abs().max() > 1e-4


@torch.no_grad()
def test_return_hidden_gives_block_outputs():
    net = make()
    args = inputs()
    y, hid = net(*args, return_hidden=[1, 3])
    assert set(hid) == {1, 3} and hid[1].shape == (3, 9, 32)
    # the hidden state after block 1 is what blocks [0, 1] alone produce internally
    _, hid01 = net(*args, blocks=[0, 1], return_hidden=[1])
    torch.testing.assert_close(hid[1], hid01[1])
    assert not torch.allclose(hid[1], hid[3])
    torch.testing.assert_close(y, net(*args))
    with pytest.raises(PrestoError):
        net(*args, blocks=[0, 1], return_hidden=[2])


@torch.no_grad()
def test_zero_init_budget_modules_are_identity():
    plain = make(seed=3)
    budget = make(seed=3, budget_embed=True, budget_rescale=True)
    missing = budget.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing.missing_keys) == {"budget_embed.weight", "budget_scale"}
    args = inputs()
    ref = plain(*args, blocks=[0, 1])
    for k in (0, 2, 4):
        out = budget(*args, blocks=[0, 1], budget=torch.full((3,), k))
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    # once trained (non-zero), the budget changes the output: the test can fail
    with torch.no_grad():
        budget.budget_embed.weight.normal_()
        budget.budget_scale[2] = 1.5
    a = budget(*args, budget=torch.full((3,), 2))
    b = budget(*args, budget=torch.full((3,), 4))
    assert (a - b).abs().max() > 1e-3


@torch.no_grad()
def test_uncond_uses_learned_null_condition():
    net = make()
    x, c, tok, mask, pooled = inputs()
    u = torch.ones(3, dtype=torch.bool)
    a = net(x, c, tok, mask, pooled, uncond=u)
    b = net(x, c, torch.randn_like(tok), mask, torch.randn_like(pooled), uncond=u)
    torch.testing.assert_close(a, b)  # text ignored
    torch.testing.assert_close(a, net(x, c, None, None, None))  # == the null condition itself
    cond = net(x, c, tok, mask, pooled)
    assert (cond - a).abs().max() > 1e-3
    # per-sample: only sample 1 is unconditional
    mixed = net(x, c, tok, mask, pooled, uncond=torch.tensor([False, True, False]))
    torch.testing.assert_close(mixed[[0, 2]], cond[[0, 2]])
    torch.testing.assert_close(mixed[1], a[1])
    # the null condition is learned: changing it changes the unconditional output
    net.null_pooled.add_(1.0)
    assert (net(x, c, tok, mask, pooled, uncond=u) - a).abs().max() > 1e-4


@torch.no_grad()
def test_padding_tokens_are_masked_out():
    net = make()
    x, c, tok, mask, pooled = inputs()
    tok2 = tok.clone()
    tok2[0, 3:] = 100.0  # garbage in sample 0's padding
    torch.testing.assert_close(net(x, c, tok, mask, pooled), net(x, c, tok2, mask, pooled))
    mask2 = mask.clone()
    mask2[0] = True
    assert (net(x, c, tok2, mask2, pooled)[0] - net(x, c, tok, mask, pooled)[0]).abs().max() > 1e-4


@torch.no_grad()
def test_fresh_network_outputs_zero_so_denoiser_is_c_skip_x():
    net = make(perturb=False)
    x, c, tok, mask, pooled = inputs()
    assert net(x, c, tok, mask, pooled).abs().max() == 0
    den = EDMDenoiser(net, EDMConfig())
    sig = torch.tensor([0.1, 1.0, 10.0])
    torch.testing.assert_close(den(x, sig, None), (0.25 / (sig ** 2 + 0.25)).view(-1, 1, 1) * x)


@torch.no_grad()
def test_patching_and_learned_positions_and_toy_shapes():
    net = make(patch=2, pos_embed="learned", max_frames=16)
    x, c, tok, mask, pooled = inputs(f=9)  # odd: padded to 10, cropped back
    assert net(x, c, tok, mask, pooled).shape == (3, 4, 9)
    # frames beyond max_frames with learned positions are refused
    with pytest.raises(PrestoError, match="max_frames"):
        net(torch.randn(1, 4, 40), c[:1], tok[:1], mask[:1], pooled[:1])
    # patch 2: 9 frames -> 5 tokens
    _, hid = net(x, c, tok, mask, pooled, return_hidden=[0])
    assert hid[0].shape == (3, 5, 32)
    # toy points: 2 channels, 1 frame
    toy = make(in_channels=2, max_frames=1)
    assert toy(torch.randn(5, 2, 1), torch.zeros(5), None, None, None).shape == (5, 2, 1)
    with pytest.raises(PrestoError, match="in_channels"):
        toy(torch.randn(5, 3, 1), torch.zeros(5))


@pytest.mark.parametrize("kw", [{}, dict(pos_embed="learned", patch=2, budget_embed=True, budget_rescale=True),
                                dict(cross_attn=False, qk_norm=False, mlp_ratio=2.5),
                                dict(patch=4, out_refine=12)])
def test_param_estimate_is_exact(kw):
    net = make(perturb=False, **kw)
    assert estimate_params(net.cfg) == net.num_params()
    assert estimate_flops(net.cfg, 16) > estimate_flops(net.cfg, 16, blocks=2) > 0


def test_bad_configs_and_budget_range():
    with pytest.raises(PrestoError, match="divisible"):
        DiT(DiTConfig(width=30, heads=4))
    net = make(budget_embed=True)
    x, c, tok, mask, pooled = inputs()
    with pytest.raises(PrestoError, match="budget"):
        net(x, c, tok, mask, pooled, budget=torch.full((3,), 9))
    with pytest.raises(PrestoError, match="block index"):
        net(x, c, tok, mask, pooled, blocks=[0, 7])


def test_bf16_autocast_and_backward():
    net = make(perturb=False)
    net.train()
    x, c, tok, mask, pooled = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x, c, tok, mask, pooled)
    assert torch.isfinite(y.float()).all()
    y.float().pow(2).mean().backward()  # zero-init output: only the output layer gets gradient
    assert net.out.weight.grad is not None


@torch.no_grad()
def test_budget_rescale_acts_on_the_stream_after_skipped_blocks():
    """The per-budget scale multiplies the residual stream entering the first block after a gap
    (keep-last dropping), so it changes the output there and nowhere without a gap."""
    net = make(seed=4, budget_rescale=True)
    args = inputs()
    ref_gap = net(*args, blocks=[0, 3], budget=torch.full((3,), 2))
    ref_first = net(*args, blocks=[0, 1], budget=torch.full((3,), 2))
    net.budget_scale[2] = 2.0
    gap = net(*args, blocks=[0, 3], budget=torch.full((3,), 2))
    first = net(*args, blocks=[0, 1], budget=torch.full((3,), 2))
    assert (gap - ref_gap).abs().max() > 1e-2  # a gap: the scale matters
    torch.testing.assert_close(first, ref_first)  # first-k has no gap: unchanged
    # equals scaling the stream by hand before block 3
    net.budget_scale[2] = 1.0

    def hook(mod, inp):
        return (inp[0] * 2.0, *inp[1:])

    handle = net.blocks[3].register_forward_pre_hook(hook)
    manual = net(*args, blocks=[0, 3], budget=torch.full((3,), 2))
    handle.remove()
    torch.testing.assert_close(gap, manual)


def _bottleneck_loss(out_refine: int, steps: int = 300) -> float:
    """EDM loss at sigma = 0.1 after training on signals constant along time (C=8, patch 4: a
    token's 32 outputs come from width 8). The optimal denoiser averages the 32 frames, so the
    loss can fall near 0.03; with only the token's linear output map, the noise outside its
    8-dim column space stays: loss >= lambda sigma^2 c_skip^2 (1 - 8/32) = 0.72."""
    from presto_cli.diffusion.edm import edm_loss

    torch.manual_seed(0)
    net = DiT(DiTConfig(in_channels=8, width=8, depth=2, heads=2, patch=4, max_frames=32,
                        noise_embed_dim=16, cross_attn=False, out_refine=out_refine))
    den = EDMDenoiser(net, EDMConfig(sigma_data=0.5))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    sigma = torch.full((64,), 0.1)
    for _ in range(steps):
        x0 = 0.5 * torch.randn(64, 8, 1, generator=g).expand(64, 8, 32)
        loss = edm_loss(den, x0, sigma, torch.randn(64, 8, 32, generator=g), None).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x0 = 0.5 * torch.randn(256, 8, 1, generator=g).expand(256, 8, 32)
        return float(edm_loss(den, x0, torch.full((256,), 0.1), torch.randn(256, 8, 32, generator=g), None).mean())


def test_output_refiner_lifts_the_patch_bottleneck():
    plain, refined = _bottleneck_loss(0), _bottleneck_loss(16)
    assert plain > 0.7, plain  # the bound above (it cannot be beaten, however long it trains)
    assert refined < 0.4, refined  # per-frame outputs average the noise away (measured 0.265)


@torch.no_grad()
def test_pooled_only_ignores_tokens_and_matches_token_dropout():
    """DiTConfig.pooled_only feeds the text through the pooled vector alone, and edm.drop_tokens
    gives a training sample exactly that input (one zero token, pooled kept)."""
    from presto_cli.diffusion.edm import Cond, drop_tokens

    net = make()
    x, c, tok, mask, pooled = inputs()
    full = net(x, c, tok, mask, pooled)
    po = copy.deepcopy(net)
    po.cfg.pooled_only = True
    a = po(x, c, tok, mask, pooled)
    torch.testing.assert_close(a, po(x, c, torch.randn_like(tok), mask, pooled))  # tokens ignored
    assert (a - full).abs().max() > 1e-3  # ... which the full model does not
    assert (po(x, c, tok, mask, torch.randn_like(pooled)) - a).abs().max() > 1e-3  # pooled used
    # the null condition stays the null condition
    u = torch.ones(3, dtype=torch.bool)
    torch.testing.assert_close(po(x, c, tok, mask, pooled, uncond=u), net(x, c, tok, mask, pooled, uncond=u))
    # drop_tokens: the dropped samples see what pooled_only gives, the others their tokens
    d = drop_tokens(Cond(tok, mask, pooled), 0.5, torch.tensor([0.9, 0.1, 0.6]))
    mixed = net(x, c, d.tokens, d.mask, d.pooled)
    torch.testing.assert_close(mixed[1], a[1])
    torch.testing.assert_close(mixed[[0, 2]], full[[0, 2]])
    torch.testing.assert_close(d.pooled, pooled)
    assert drop_tokens(Cond(tok, mask, pooled), 0.0, torch.zeros(3)).tokens is tok  # p = 0: unchanged
