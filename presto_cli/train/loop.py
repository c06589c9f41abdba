"""One training loop for every stage: single process or DDP under torchrun.

The loop owns what every stage shares: the run directory, data order, counter-based randomness,
checkpoints (atomic, with a ``latest`` pointer), exact resume, metrics.jsonl, progress on rank 0, the
NaN/inf guard and the final artefact export. A :class:`Task` owns its networks, optimisers, EMA and
losses (STYLE.md: the training wrapper is not the model).

Randomness is counter-based: every random draw at step ``s`` comes from a generator seeded by
``(recipe.seed, s, tag)``. Resuming therefore needs no RNG state, and under torchrun each rank draws
the *global* batch's noise and keeps its own rows, so N processes reproduce one process with the same
global batch (up to floating-point reduction order).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from presto_cli.errors import PrestoError
from presto_cli.io import atomic_torch_save, atomic_write_text
from presto_cli.recipes import BaseRecipe, dump_recipe, recipe_to_dict
from presto_cli.runtime import console, dist_info, resolve_device
from presto_cli.seeds import seed_for, seeded  # noqa: F401  (tasks use them from here)

# --------------------------------------------------------------------------------------------
# Task registry

_TASKS: dict[str, type] = {}


def register_task(stage: str):
    def deco(cls):
        _TASKS[stage] = cls
        cls.stage = stage
        return cls

    return deco


def task_class(stage: str) -> type:
    from presto_cli.recipes import recipe_class

    recipe_class(stage)  # imports the stage modules, raises a clear error if unknown
    if stage not in _TASKS:
        raise PrestoError(f"stage '{stage}' has a recipe but no training task")
    return _TASKS[stage]


class Task:
    """Base class of a training stage. Subclasses implement the methods below."""

    stage = ""

    def __init__(self, recipe: BaseRecipe, ctx: "Context", run_dir: Path):
        self.recipe = recipe
        self.ctx = ctx
        self.run_dir = Path(run_dir)

    def make_dataset(self):  # map-style dataset; see docs/ARCHITECTURE.md
        raise NotImplementedError

    def train_step(self, batch: dict, ctx: "Context") -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, sd: dict) -> None:
        raise NotImplementedError

    def export(self, path: Path) -> None:
        raise NotImplementedError

    def describe(self) -> dict:
        """Extra facts for --dry-run and the log (parameter counts ...)."""
        return {}


# --------------------------------------------------------------------------------------------
# Counter-based randomness and the per-step context


class Context:
    """What a task sees of the loop: the step, the ranks, the device, and seeded randomness."""

    def __init__(self, seed: int, device: torch.device, precision: str = "auto",
                 global_batch: int = 1):
        self.seed = seed
        self.step = 0
        self.rank, self.world = dist_info()
        self.device = device
        self.precision = precision
        if global_batch % self.world:
            raise PrestoError(f"train.batch_size={global_batch} is not divisible by the "
                              f"{self.world} processes", "choose a multiple of --nproc_per_node")
        self.global_batch = global_batch
        self.local_batch = global_batch // self.world

    # randomness -------------------------------------------------------------------------
    def generator(self, tag: str, *extra: Any) -> torch.Generator:
        """A CPU generator seeded by (seed, step, tag, *extra): identical on every rank."""
        g = torch.Generator()
        g.manual_seed(seed_for(self.seed, self.step, tag, *extra))
        return g

    def local_rows(self, n_global: int) -> slice:
        per = n_global // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def randn(self, tag: str, global_shape: Iterable[int], dtype=torch.float32) -> torch.Tensor:
        """Standard normal of the global batch's shape; returns this rank's rows on the device."""
        shape = tuple(global_shape)
        x = torch.randn(shape, generator=self.generator(tag), dtype=dtype)
        return x[self.local_rows(shape[0])].to(self.device)

    def rand(self, tag: str, global_shape: Iterable[int], dtype=torch.float32) -> torch.Tensor:
        shape = tuple(global_shape)
        x = torch.rand(shape, generator=self.generator(tag), dtype=dtype)
        return x[self.local_rows(shape[0])].to(self.device)

    # distributed ------------------------------------------------------------------------
    @property
    def distributed(self) -> bool:
        return self.world > 1 and torch.distributed.is_initialized()

    def sync_grads(self, *modules: nn.Module) -> None:
        """Average gradients over ranks (a no-op in one process). Call after backward."""
        if not self.distributed:
            return
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        if not params:
            return
        # a parameter may get a gradient on one rank only (e.g. the null condition when only that
        # rank dropped captions): agree on which have one, as one process would see it
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
        torch.distributed.all_reduce(has)
        grads = []
        for p, h in zip(params, has.tolist()):
            if h > 0:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        i = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[i:i + n].view_as(g))
            i += n

    def all_mean(self, values: dict[str, float]) -> dict[str, float]:
        if not self.distributed or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist())}

    # precision --------------------------------------------------------------------------
    def autocast(self):
        use_bf16 = self.device.type == "cuda" and self.precision in ("auto", "bf16")
        if self.precision == "bf16" and self.device.type == "cpu":
            use_bf16 = True
        if use_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# Helpers tasks share


class EMA:
    """Exponential moving average of a module's parameters and buffers."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module, step: int | None = None) -> None:
        d = self.decay
        if step is not None:  # warm-up: average plainly over the first steps
            d = min(d, (1 + step) / (10 + step))
        for s, p in zip(self.shadow.parameters(), module.parameters()):
            s.lerp_(p.detach().to(s.dtype), 1 - d)
        for s, b in zip(self.shadow.buffers(), module.buffers()):
            s.copy_(b)

    def state_dict(self) -> dict:
        return self.shadow.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.shadow.load_state_dict(sd)


def ema_state(ema: EMA | None) -> dict:
    """A checkpoint's ``{"ema": ...}`` entry, or nothing when the EMA is off."""
    return {} if ema is None else {"ema": ema.state_dict()}


def build_adamw(params, lr: float, train_cfg, lr_mult: dict | None = None,
                named: dict | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable ``params``; ``lr_mult`` maps parameter-name prefixes (names from
    ``named``, a ``named_parameters()`` dict) to a learning-rate multiplier (its own param group,
    kept by :func:`set_lr`)."""
    params = [p for p in params if p.requires_grad]
    groups = [{"params": params, "lr_mult": 1.0}]
    if lr_mult and named:
        ids = {}
        for prefix, mult in lr_mult.items():
            chosen = [p for n, p in named.items() if n.startswith(prefix) and p.requires_grad]
            for p in chosen:
                ids[id(p)] = float(mult)
        rest = [p for p in params if id(p) not in ids]
        groups = [{"params": rest, "lr_mult": 1.0}]
        for mult in sorted(set(ids.values())):
            groups.append({"params": [p for p in params if ids.get(id(p)) == mult], "lr_mult": mult})
        groups = [g for g in groups if g["params"]]
    for g in groups:
        g["lr"] = lr * g["lr_mult"]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(train_cfg.betas),
                             weight_decay=train_cfg.weight_decay)


def warmup_lr(base_lr: float, step: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant (DMD2's and our default)."""
    if warmup <= 0:
        return base_lr
    return base_lr * min(1.0, (step + 1) / warmup)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)


def clip_and_norm(params, max_norm: float) -> float:
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    if max_norm and max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, modules: Iterable[nn.Module], ctx,
                   grad_clip: float, *, lr: float | None = None, ema: EMA | None = None,
                   ema_step: int | None = None) -> float:
    """One update of ``modules`` by ``opt``: set the LR (when given), zero the gradients, backward,
    average the gradients over ranks (``ctx.sync_grads``), clip, step, update the EMA (of the first
    module, warm-up counted by ``ema_step``, default ``ctx.step``). Returns the gradient norm before
    clipping. Every task's update goes through here."""
    modules = list(modules)
    if lr is not None:
        set_lr(opt, lr)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    ctx.sync_grads(*modules)
    gnorm = clip_and_norm([p for m in modules for p in m.parameters()], grad_clip)
    opt.step()
    if ema is not None:
        ema.update(modules[0], ctx.step if ema_step is None else ema_step)
    return gnorm


# --------------------------------------------------------------------------------------------
# Data order


def collate(items: list[dict]) -> dict:
    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


class BatchSource:
    """The global batch of step s is fixed by (seed, s): epochs of seeded permutations."""

    def __init__(self, dataset, seed: int, ctx: Context):
        self.dataset = dataset
        self.n = len(dataset)
        if self.n == 0:
            raise PrestoError("the training set is empty", "check data.path / run `presto data prepare`")
        self.seed = seed
        self.ctx = ctx
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator()
            g.manual_seed(seed_for(self.seed, "epoch", epoch))
            self._perms = {epoch: torch.randperm(self.n, generator=g)}
        return self._perms[epoch]

    def batch(self, step: int) -> dict:
        B = self.ctx.global_batch
        rows = range(B)[self.ctx.local_rows(B)]
        items = []
        getitem = getattr(self.dataset, "getitem", None)
        for j in rows:
            g_idx = step * B + j
            idx = int(self._perm(g_idx // self.n)[g_idx % self.n])
            if getitem is not None:
                rng = torch.Generator()
                rng.manual_seed(seed_for(self.seed, step, "item", j))
                items.append(getitem(idx, rng))
            else:
                items.append(self.dataset[idx])
        return collate(items)


# --------------------------------------------------------------------------------------------
# Run directory


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}.pt"


def latest_checkpoint(run_dir: Path) -> Path | None:
    p = Path(run_dir) / "latest"
    if not p.is_file():
        return None
    ck = Path(run_dir) / "checkpoints" / p.read_text().strip()
    return ck if ck.is_file() else None


def _checkpoints_newest_first(run_dir: Path) -> list[Path]:
    """Every checkpoint of a run, the one ``latest`` points at first, then by step, newest first."""
    found = sorted((Path(run_dir) / "checkpoints").glob("step_*.pt"), reverse=True)
    latest = latest_checkpoint(run_dir)
    return ([latest] if latest in found else []) + [p for p in found if p != latest]


def read_checkpoint(path: Path) -> dict:
    """A training checkpoint (tensors and plain data only: ``weights_only``); one clear line when
    the file is empty, truncated or not a presto checkpoint."""
    try:
        if path.stat().st_size == 0:
            raise PrestoError(f"checkpoint {path} is empty (0 bytes)")
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except PrestoError:
        raise
    except Exception as e:  # EOFError, zip/unpickling errors, OSError on a truncated file
        raise PrestoError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__})") from None
    if not isinstance(sd, dict) or "task" not in sd or "step" not in sd:
        raise PrestoError(f"checkpoint {path} is not a presto training checkpoint")
    return sd


def load_checkpoint(run_dir: Path, step: int | None = None,
                    log: Callable[[str], None] = console.print) -> tuple[Path, dict]:
    """The checkpoint of ``step``, or the newest intact one (naming every corrupt one skipped)."""
    if step is not None:
        ck = Path(run_dir) / "checkpoints" / checkpoint_name(step)
        if not ck.is_file():
            have = ", ".join(p.stem.split("_")[-1].lstrip("0") or "0" for p in _checkpoints_newest_first(run_dir))
            raise PrestoError(f"no checkpoint for step {step} in {run_dir}",
                              f"steps saved: {have}" if have else "the run has no checkpoints")
        return ck, read_checkpoint(ck)
    bad: list[str] = []
    for ck in _checkpoints_newest_first(run_dir):
        try:
            sd = read_checkpoint(ck)
        except PrestoError as e:
            log(f"warning: {e}; trying an older one")
            bad.append(ck.name)
            continue
        if bad:
            log(f"using {ck.name} (step {int(sd['step'])}), the newest intact checkpoint")
        return ck, sd
    if bad:
        raise PrestoError(f"every checkpoint in {run_dir} is corrupt ({', '.join(bad)})",
                          "start the run again with another --out")
    raise PrestoError(f"no checkpoint in {run_dir}", "give a run directory made by a training command")


def _finite(metrics: dict[str, float]) -> bool:
    return all(math.isfinite(float(v)) for v in metrics.values())


def _truncate_metrics(path: Path, upto_step: int) -> None:
    """On resume, drop metrics logged after the checkpoint (they will be logged again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= upto_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
    atomic_write_text(path, "".join(l + "\n" for l in keep))


def _init_distributed(device: torch.device) -> None:
    rank, world = dist_info()
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend=backend)


def build_task(recipe: BaseRecipe, run_dir: Path, device: torch.device | None = None) -> Task:
    device = device or resolve_device(recipe.train.device)
    ctx = Context(recipe.seed, device, recipe.train.precision, recipe.train.batch_size)
    # initial weights come from the seed alone: the same on every rank and in every run
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(recipe.seed, "init", recipe.stage))
        return task_class(recipe.stage)(recipe, ctx, run_dir)


def run_stage(recipe: BaseRecipe, out_dir: str | Path, resume: bool = False,
              progress: bool = True, on_step: Callable[[int, dict], None] | None = None) -> Path:
    """Train ``recipe`` into ``out_dir``; returns the exported artefact's path. The run directory is
    claimed for the run (:mod:`presto_cli.claim`): a second run aimed at it while this one lives is
    refused with one line instead of writing the same checkpoints."""
    from presto_cli.claim import claim_outputs

    device = resolve_device(recipe.train.device)
    _init_distributed(device)
    if dist_info()[0] != 0:  # rank 0 holds the claim for the whole group
        return _run_stage(recipe, Path(out_dir), device, resume, progress, on_step)
    with claim_outputs([Path(out_dir)], force=True):
        return _run_stage(recipe, Path(out_dir), device, resume, progress, on_step)


def _run_stage(recipe: BaseRecipe, run_dir: Path, device, resume: bool, progress: bool,
               on_step: Callable[[int, dict], None] | None) -> Path:
    rank, world = dist_info()
    ckpt_dir = run_dir / "checkpoints"
    existing = _checkpoints_newest_first(run_dir)
    if existing and not resume:
        raise PrestoError(f"{run_dir} already holds a run (checkpoint {existing[0].name})",
                          "pass --resume to continue it, or choose another --out")
    if resume and not existing and rank == 0:
        console.print(f"[yellow]--resume: no checkpoint in {run_dir}, starting from step 0[/]")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    task = build_task(recipe, run_dir, device)  # before the run directory exists: a bad recipe leaves none
    ctx = task.ctx
    start = 0
    if resume and existing:
        _, sd = load_checkpoint(run_dir, log=lambda s: console.print(s, markup=False, soft_wrap=True))
        task.load_state_dict(sd["task"])
        start = int(sd["step"])
        if rank == 0:
            console.print(f"resuming {run_dir} from step {start}")
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
    metrics_path = run_dir / "metrics.jsonl"
    if rank == 0:
        if start:
            _truncate_metrics(metrics_path, start)
        elif metrics_path.exists():
            metrics_path.unlink()
    source = BatchSource(task.make_dataset(), recipe.seed, ctx)
    steps = recipe.train.steps
    log_every = max(1, recipe.train.log_every)
    ckpt_every = max(1, recipe.train.ckpt_every)
    log = open(run_dir / "log.txt", "a") if rank == 0 else None

    def save(step: int) -> None:
        if rank != 0:
            return
        name = checkpoint_name(step)
        atomic_torch_save({"step": step, "task": task.state_dict(), "stage": recipe.stage,
                           "recipe": recipe_to_dict(recipe)}, ckpt_dir / name)
        atomic_write_text(run_dir / "latest", name + "\n")
        olds = sorted(ckpt_dir.glob("step_*.pt"))
        for old in olds[:-max(1, recipe.train.keep_ckpts)]:
            old.unlink(missing_ok=True)

    from presto_cli.runtime import progress as progress_bar

    t0 = time.time()
    last_saved = start
    with progress_bar(recipe.stage, total=steps, quiet=not progress, transient=False,
                      lines=progress) as tick:
        tick.start_at(start)
        for step in range(start, steps):
            ctx.step = step
            batch = source.batch(step)
            metrics = task.train_step(batch, ctx)
            metrics = ctx.all_mean({k: float(v) for k, v in metrics.items()})
            if not _finite(metrics):
                bad = [k for k, v in metrics.items() if not math.isfinite(v)]
                msg = (f"non-finite {', '.join(bad)} at step {step + 1}; training stopped, the last "
                       f"good checkpoint is step {last_saved}")
                if log:
                    log.write(msg + "\n")
                    log.close()
                raise PrestoError(msg, "lower train.lr or raise train.grad_clip, then --resume")
            done = step + 1
            if rank == 0 and (done % log_every == 0 or done == steps or done == 1):
                rec = {"step": done, **{k: round(v, 6) for k, v in metrics.items()},
                       "time": round(time.time() - t0, 3)}
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                if log:
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                short = " ".join(f"{k}={v:.4g}" for k, v in list(metrics.items())[:4])
                tick.note(short)
            tick.update(done)
            if on_step:
                on_step(done, metrics)
            if done % ckpt_every == 0 or done == steps:
                save(done)
                last_saved = done
    artefact = run_dir / "model.safetensors"
    if rank == 0:
        task.export(artefact)
        if log:
            log.write(f"exported {artefact}\n")
            log.close()
    if ctx.distributed:
        torch.distributed.barrier()
    return artefact
