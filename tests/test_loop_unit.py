"""The shared training loop on a least-squares toy task whose optimum is known."""
import json
from dataclasses import dataclass, field

import pytest
import torch

from presto_cli.errors import PrestoError
from presto_cli.recipes import BaseRecipe, register_stage
from presto_cli.train.loop import EMA, Task, register_task, run_stage

TRUE_W = torch.tensor([[2.0, -1.0, 0.5]])


@dataclass
class _LSQ:
    noise: float = 0.0
    poison_at: int = -1  # return a NaN loss at this step (tests the guard)


@register_stage("_lsq")
@dataclass
class _LSQRecipe(BaseRecipe):
    lsq: _LSQ = field(default_factory=_LSQ)


class _Points(torch.utils.data.Dataset):
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i]}


@register_task("_lsq")
class _LSQTask(Task):
    def __init__(self, recipe, ctx, run_dir):
        super().__init__(recipe, ctx, run_dir)
        torch.manual_seed(recipe.seed)
        self.net = torch.nn.Linear(3, 1, bias=False)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=recipe.train.lr)
        self.ema = EMA(self.net, recipe.train.ema)

    def make_dataset(self):
        return _Points()

    def train_step(self, batch, ctx):
        x = batch["x"]
        y = x @ TRUE_W.T + self.recipe.lsq.noise * ctx.randn("noise", (ctx.global_batch, 1))
        loss = ((self.net(x) - y) ** 2).mean()
        if ctx.step == self.recipe.lsq.poison_at:
            loss = loss * float("nan")
        self.opt.zero_grad()
        loss.backward()
        ctx.sync_grads(self.net)
        self.opt.step()
        self.ema.update(self.net)
        return {"loss": loss.item()}

    def state_dict(self):
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "ema": self.ema.state_dict()}

    def load_state_dict(self, sd):
        self.net.load_state_dict(sd["net"])
        self.opt.load_state_dict(sd["opt"])
        self.ema.load_state_dict(sd["ema"])

    def export(self, path):
        from presto_cli.io import save_artefact

        save_artefact(path, {"w": self.ema.shadow.weight}, {"kind": "teacher", "model": {}})


def _recipe(**kw):
    r = _LSQRecipe(stage="_lsq")
    r.train.steps = kw.get("steps", 40)
    r.train.batch_size = 8
    r.train.lr = 0.1
    r.train.ema = 0.5
    r.train.ckpt_every = kw.get("ckpt_every", 10)
    r.train.log_every = 1
    r.train.keep_ckpts = 2
    r.lsq.noise = kw.get("noise", 0.1)
    r.lsq.poison_at = kw.get("poison_at", -1)
    return r


def _metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_learns_known_optimum(tmp_path):
    from presto_cli.io import load_artefact

    art = run_stage(_recipe(steps=60, noise=0.0), tmp_path / "run", progress=False)
    w, meta = load_artefact(art)
    assert torch.allclose(w["w"], TRUE_W, atol=1e-2), w["w"]
    assert meta["kind"] == "teacher"
    assert (tmp_path / "run" / "latest").read_text().strip() == "step_0000060.pt"
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert ckpts == ["step_0000050.pt", "step_0000060.pt"]  # keep_ckpts=2
    assert not list((tmp_path / "run").rglob("*.tmp*"))


def test_resume_reproduces_uninterrupted_run(tmp_path):
    full = tmp_path / "full"
    run_stage(_recipe(steps=30), full, progress=False)
    part = tmp_path / "part"
    run_stage(_recipe(steps=20), part, progress=False)  # as if killed after the step-20 checkpoint
    with open(part / "metrics.jsonl", "a") as f:  # lines logged after the checkpoint are redone
        f.write(json.dumps({"step": 21, "loss": 123.0}) + "\n")
    run_stage(_recipe(steps=30), part, resume=True, progress=False)
    a, b = _metrics(full), _metrics(part)
    assert [m["step"] for m in a] == [m["step"] for m in b] == list(range(1, 31))
    assert [m["loss"] for m in a] == [m["loss"] for m in b]


def test_existing_run_needs_resume(tmp_path):
    run_stage(_recipe(steps=10), tmp_path / "r", progress=False)
    with pytest.raises(PrestoError, match="--resume"):
        run_stage(_recipe(steps=10), tmp_path / "r", progress=False)


def test_nan_guard_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(PrestoError, match=r"non-finite loss at step 16.*step 10"):
        run_stage(_recipe(steps=40, poison_at=15), tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "latest").read_text().strip() == "step_0000010.pt"
    sd = torch.load(tmp_path / "r" / "checkpoints" / "step_0000010.pt", weights_only=True)
    assert torch.isfinite(sd["task"]["net"]["weight"]).all()
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_batch_order_depends_on_seed_only(tmp_path):
    from presto_cli.train.loop import BatchSource, Context

    ctx = Context(seed=5, device=torch.device("cpu"), global_batch=8)
    a = BatchSource(_Points(), 5, ctx).batch(3)["x"]
    b = BatchSource(_Points(), 5, ctx).batch(3)["x"]
    c = BatchSource(_Points(), 6, ctx).batch(3)["x"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    # each epoch visits every sample exactly once
    src = BatchSource(_Points(), 5, ctx)
    seen = torch.cat([src.batch(s)["x"] for s in range(8)])
    assert torch.equal(seen.unique(dim=0), _Points().x.unique(dim=0))
