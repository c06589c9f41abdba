"""How much does running k of a DiT's L blocks actually save? (not a test)

Times the denoiser forward at every depth k (first-k and keep-last block choices give the same
count, so the same cost; both are timed) against full depth, and prints the measured time ratio
beside the ideal k/L. The gap is the fixed cost (embeddings, text projection, output layer,
Python overhead) that layer dropping does not remove. Then the default ASE-style schedule's
mean compute per sampler step and the speed-up it predicts from these timings.

    python benchmarks/layer_cost.py                      # demo-sized DiT, 8 s clip, CPU
    python benchmarks/layer_cost.py --device cuda --width 1536 --depth 17 --frames 688 --heads 24
"""
from __future__ import annotations

import argparse
import time

import torch

from presto_cli.diffusion.edm import Cond, EDMConfig, EDMDenoiser
from presto_cli.diffusion.schedules import karras_sigmas
from presto_cli.diffusion.layer_schedule import LayerSchedule, eval_sigmas
from presto_cli.models.dit import DiT, DiTConfig
from presto_cli.runtime import resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_forward(den: EDMDenoiser, x, sigma, cond, blocks, repeats: int, device) -> float:
    """Median wall time (ms) of one forward running ``blocks``."""
    for _ in range(2):  # warm-up
        den(x, sigma, cond, blocks=blocks)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        den(x, sigma, cond, blocks=blocks)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--text-tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--steps", type=int, default=32, help="sampler steps for the schedule estimate")
    a = ap.parse_args()

    device = resolve_device(a.device)
    torch.manual_seed(0)
    cfg = DiTConfig(in_channels=a.channels, width=a.width, depth=a.depth, heads=a.heads,
                    max_frames=a.frames)
    den = EDMDenoiser(DiT(cfg), EDMConfig()).to(device).eval()
    x = torch.randn(a.batch, a.channels, a.frames, device=device)
    sigma = torch.full((a.batch,), 1.0, device=device)
    cond = Cond(torch.randn(a.batch, a.text_tokens, cfg.text_dim, device=device),
                torch.ones(a.batch, a.text_tokens, dtype=torch.bool, device=device),
                torch.randn(a.batch, cfg.text_dim, device=device))
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if a.bf16 else torch.no_grad()
    L = a.depth
    print(f"# DiT width {a.width} depth {L}, {a.frames} frames, batch {a.batch}, {device}"
          f"{' bf16' if a.bf16 else ''}, median of {a.repeats}")
    ms: dict[int, float] = {}
    rows = []
    with ctx:
        full = time_forward(den, x, sigma, cond, None, a.repeats, device)
        for k in range(1, L + 1):
            first = LayerSchedule.constant(k, L, "first-k").blocks(1.0)
            last = LayerSchedule.constant(k, L, "keep-last").blocks(1.0)
            t1 = time_forward(den, x, sigma, cond, first, a.repeats, device)
            t2 = time_forward(den, x, sigma, cond, last, a.repeats, device)
            ms[k] = (t1 + t2) / 2
            rows.append((k, t1, t2))
    print(f"{'k':>3} {'first-k ms':>11} {'keep-last ms':>13} {'ratio':>7} {'ideal k/L':>10}")
    for k, t1, t2 in rows:  # ratio to the same code path at k = L
        print(f"{k:>3} {t1:>11.2f} {t2:>13.2f} {ms[k] / ms[L]:>7.3f} {k / L:>10.3f}")
    print(f"full depth (blocks=None): {full:.2f} ms")
    sched = LayerSchedule.default(L, "keep-last")
    print(f"# default schedule: {sched.describe()}")
    for sampler in ("heun", "dpmpp_2m", "euler"):
        sig = eval_sigmas(sampler, karras_sigmas(a.steps, 0.002, 80.0, 7.0).tolist())
        frac = sched.mean_compute(sig)
        t = sum(ms[sched.depth(s)] for s in sig) / (len(sig) * ms[L])
        print(f"{sampler} {a.steps} steps: mean depth {frac:.3f} of full, measured time "
              f"{t:.3f} of full (speed-up x{1 / t:.2f})")


if __name__ == "__main__":
    main()
