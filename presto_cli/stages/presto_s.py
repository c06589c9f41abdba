"""Stage ``presto-s`` (``presto distill-steps``, METHOD.md section 3): Presto-S
(:class:`~presto_cli.distill.presto_s.PrestoS`) on the teacher's data (latent cache or toy mixture)."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

from presto_cli.diffusion.edm import EDMDenoiser
from presto_cli.distill.presto_s import DistillConfig, OptimConfig, PrestoS, teacher_cfg_weight
from presto_cli.errors import PrestoError
from presto_cli.io import prefixed, save_artefact
from presto_cli.recipes import BaseRecipe, recipe_to_dict, register_stage
from presto_cli.stages.common import DistillTask
from presto_cli.train.loop import register_task, warmup_lr

__all__ = ["PrestoSRecipe", "PrestoSTask", "optim_config"]


@register_stage("presto-s")
@dataclass
class PrestoSRecipe(BaseRecipe):
    """``presto distill-steps``: the model comes from the teacher artefact, so no ``model:``."""

    stage: str = "presto-s"
    distill: DistillConfig = field(default_factory=DistillConfig)
    toy_size: int = 4096  # points drawn when the teacher was trained on a toy mixture

    def teacher_path(self) -> str:
        path = self.distill.teacher or self.data.teacher
        if not path:
            raise PrestoError("the presto-s stage needs a teacher artefact (distill.teacher or "
                              "data.teacher)", "train one with `presto pretrain "
                              "recipes/tiny/teacher.yaml`, then set data.teacher=runs/tiny-teacher/"
                              "model.safetensors")
        return path

    def describe(self) -> dict:
        """For ``--dry-run``: validates the distill section and names the teacher."""
        self.distill.validate()
        d = self.distill
        return {"teacher": self.teacher_path(), "update_ratio": d.update_ratio,
                "noise": {"gen": d.p_gen, "dmd": d.p_dmd, "dsm": d.p_dsm, "gan": d.p_gan},
                "gen_input": d.gen_input}


def optim_config(recipe: PrestoSRecipe) -> OptimConfig:
    """Resolve the optimiser settings: ``distill.*`` where given, else ``train.*``."""
    d, t = recipe.distill, recipe.train
    lr_gen = d.lr_gen if d.lr_gen is not None else t.lr
    return OptimConfig(lr_gen=lr_gen, lr_fake=d.lr_fake if d.lr_fake is not None else lr_gen,
                       betas=(float(t.betas[0]), float(t.betas[1])), weight_decay=t.weight_decay,
                       warmup=d.warmup if d.warmup is not None else t.warmup,
                       grad_clip=d.grad_clip, ema=d.ema if d.ema is not None else t.ema)


def load_generator_init(path: str, kind: str, command: str, device) -> tuple[EDMDenoiser, dict]:
    """``distill.init``: an exported generator of ``kind`` (made by ``presto COMMAND``) as
    ``(denoiser, meta)``; a missing file or another kind of artefact is one clear error."""
    from presto_cli.diffusion.artefact import load_teacher

    if not Path(path).is_file():
        raise PrestoError(f"distill.init: no file {path}",
                          f"give an exported {kind} model (model.safetensors of a `presto {command}` run)")
    gen, meta, _ = load_teacher(path, device)
    if meta.get("kind") != kind:
        raise PrestoError(f"distill.init: {path} is a '{meta.get('kind')}' artefact",
                          f"give a `presto {command}` output")
    return gen, meta


def warm_start(gen: EDMDenoiser, teacher: EDMDenoiser, path: str) -> EDMDenoiser:
    """The generator ``distill.init`` starts from, on the teacher's network.

    The same network as the teacher: ``gen`` itself. A generator distilled from an earlier teacher
    that lacks parts the teacher has added (``init_compatible``: the 2-D head, tempo/key
    conditions): the teacher's network with ``gen``'s weights wherever ``gen`` has them and the
    teacher's own weights for the added parts (a fresh Presto-S generator starts as the teacher, so
    these are the weights it would have had). Any other difference is one clear error."""
    from presto_cli.io import load_state_strict
    from presto_cli.models.dit import init_compatible

    src, dst = recipe_to_dict(gen.net.cfg), recipe_to_dict(teacher.net.cfg)
    if src == dst:
        return gen
    bad, added = init_compatible(src, teacher.net.cfg)
    if bad or not added:  # (no part added: it differs only in how it reads the text)
        bad = bad or [f"{k}: {src.get(k)!r} -> {v!r}" for k, v in dst.items() if src.get(k) != v]
        raise PrestoError(f"distill.init: {path} is not the same network as the teacher ({'; '.join(bad)})",
                          "continue from a generator distilled from this teacher, or from one that "
                          "lacks only parts the teacher added (head2d, tempo_cond, key_cond, tempo_phase)")
    out = copy.deepcopy(teacher)
    load_state_strict(out.net, gen.net.state_dict(), f"distill.init {path}", allow_missing=added)
    return out.to(next(gen.parameters()).device)


@register_task("presto-s")
class PrestoSTask(DistillTask):
    """``presto distill-steps``: Presto-S on the teacher's data (latent cache or toy mixture)."""

    kind = "presto-s"

    def __init__(self, recipe: PrestoSRecipe, ctx, run_dir: Path):
        recipe.distill.validate()
        super().__init__(recipe, ctx, run_dir, recipe.teacher_path(), "Presto-S distils a teacher",
                         "distill.teacher")
        if recipe.distill.teacher_dtype == "bf16" and self.device.type != "cuda":
            raise PrestoError("distill.teacher_dtype=bf16 needs a CUDA device",
                              "use distill.teacher_dtype=fp32 on CPU")
        meta = self.teacher_meta
        w = recipe.distill.cfg if recipe.distill.cfg is not None else teacher_cfg_weight(meta)
        self.model = self.build_model(self.frozen, w)
        del self.frozen  # held by the model as its real score
        if recipe.distill.reg_weight > 0:
            self.model.reg = self.regression_pairs()

    def build_model(self, teacher: EDMDenoiser, w: float) -> PrestoS:
        """The Presto-S networks (Presto-LS overrides this to start G from a Presto-L model).
        ``distill.init`` starts G from an exported Presto-S generator of the same teacher (the fake
        score and the head start afresh, from the teacher and the seed)."""
        return PrestoS(teacher, self.recipe.distill, optim_config(self.recipe), w,
                       generator_init=self.generator_init(teacher), seed=self.recipe.seed)

    def generator_init(self, teacher: EDMDenoiser) -> EDMDenoiser | None:
        path = self.recipe.distill.init
        if not path:
            return None
        gen, _ = load_generator_init(path, "presto-s", "distill-steps", self.device)
        return warm_start(gen, teacher, path)

    def regression_pairs(self):
        """Teacher ODE trajectories for ``distill.reg_weight`` (distill/regression.py): made once
        (``<run>/reg_pairs.safetensors``, reused on resume when it matches the recipe and teacher),
        from ``reg_pairs`` training captions (or ``reg_prompts``' captions) and noises drawn from the
        recipe seed."""
        import hashlib
        import time

        import torch
        from safetensors import safe_open
        from safetensors.torch import save_file

        from presto_cli.diffusion.schedules import fewstep_points
        from presto_cli.distill.regression import RegressionPairs, teacher_trajectories
        from presto_cli.io import atomic_path
        from presto_cli.runtime import console
        from presto_cli.seeds import seed_for

        r, m = self.recipe, self.model
        d = r.distill
        edm = m.teacher.cfg
        points = fewstep_points(d.gen_steps, edm.sigma_min, edm.sigma_max, m.rho)
        ds = self.make_dataset()
        g = torch.Generator().manual_seed(seed_for(r.seed, "reg-pairs"))
        idx = torch.randint(len(ds), (d.reg_pairs,), generator=g).tolist()
        items = [ds[i] for i in idx]
        captions = [it["caption"] for it in items]
        if d.reg_prompts:
            # captions from a file (more wordings than the corpus has), each used once before any
            # is used again, in an order drawn from the recipe seed
            from presto_cli.prompts import read_prompts

            pool = [row["prompt"] for row in read_prompts(d.reg_prompts)]
            gc = torch.Generator().manual_seed(seed_for(r.seed, "reg-captions"))  # noise draws unchanged
            order = torch.cat([torch.randperm(len(pool), generator=gc)
                               for _ in range(-(-d.reg_pairs // len(pool)))])[:d.reg_pairs]
            captions = [pool[i] for i in order.tolist()]
        if d.reg_prompts:  # a tempo/key written in a prompt conditions its trajectory
            from presto_cli.text.musical import NO_KEY, parse_prompt

            parsed = [parse_prompt(c) for c in captions]
            tempo = [float("nan") if b is None else b for b, _ in parsed]
            keys = [NO_KEY if k is None else k for _, k in parsed]
        else:
            tempo = [float(it.get("tempo", float("nan"))) for it in items]
            keys = [int(it.get("key", -1)) for it in items]
        tempo_t, keys_t = torch.tensor(tempo, dtype=torch.float32), torch.tensor(keys, dtype=torch.long)
        shape = tuple(items[0]["latents"].shape)
        key = {"teacher_sha256": self.teacher_sha256, "pairs": d.reg_pairs, "steps": d.reg_steps,
               "w": m.w, "points": [round(float(p), 6) for p in points], "seed": r.seed, "shape": list(shape),
               "captions_sha256": hashlib.sha256("\n".join(captions).encode()).hexdigest()}
        if m.cfg_interval is not None:  # only when set: trajectories cached before the option stay valid
            key["cfg_interval"] = list(m.cfg_interval)
        if bool(torch.isfinite(tempo_t).any()) or bool((keys_t >= 0).any()):
            key["tempo_key_sha256"] = hashlib.sha256(json.dumps([tempo, keys]).encode()).hexdigest()
        path = self.run_dir / "reg_pairs.safetensors"
        cached = None
        if path.is_file():
            with safe_open(str(path), framework="pt") as f:
                if json.loads((f.metadata() or {}).get("key", "{}")) == key:
                    cached = {k: f.get_tensor(k) for k in f.keys()}
        if cached is None:
            noise = torch.randn((d.reg_pairs,) + shape, generator=g)
            states, ends, t0, bs = [], [], time.time(), 16
            for a in range(0, d.reg_pairs, bs):
                cond = self.text(captions[a:a + bs], self.device, tempo_t[a:a + bs], keys_t[a:a + bs])
                st, en = teacher_trajectories(m.teacher, noise[a:a + bs], cond, m.w, points, d.reg_steps, m.rho,
                                              m.cfg_interval)
                states.append(st.half().cpu())
                ends.append(en.half().cpu())
                done = min(a + bs, d.reg_pairs)
                console.print(f"teacher trajectories for the regression loss: {done}/{d.reg_pairs} "
                              f"({time.time() - t0:.0f} s)")
            cached = {"states": torch.cat(states), "ends": torch.cat(ends)}
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, suffix=".safetensors") as tmp:
                save_file(cached, str(tmp), metadata={"key": json.dumps(key), "captions": json.dumps(captions)})
        cond = self.text(captions, self.device, tempo_t, keys_t)
        return RegressionPairs(cached["states"], points.cpu(), cached["ends"], cond)

    # -- training ----------------------------------------------------------------------------
    def train_step(self, batch: dict, ctx) -> dict[str, float]:
        x = batch["latents"].to(self.device).float()
        in_ch = self.model.generator.net.cfg.in_channels
        if x.dim() != 3 or x.shape[1] != in_ch:
            raise PrestoError(f"latents of shape {tuple(x.shape[1:])} do not match the teacher's "
                              f"{in_ch} channels", "use the data the teacher was trained on")
        cond = self.text.batch(batch, self.device)
        m = self.model.train_step(x, cond, ctx, global_batch=ctx.global_batch)
        m["lr_gen"] = warmup_lr(self.model.ocfg.lr_gen, ctx.step, self.model.ocfg.warmup)
        return m

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"presto_s": self.model.state_dict(), "teacher": self.teacher_path,
                "teacher_sha256": self.teacher_sha256}

    def load_state_dict(self, sd: dict) -> None:
        self.check_teacher(sd)
        self.model.load_state_dict(sd["presto_s"])

    def export_meta(self) -> dict:
        """Artefact metadata: the teacher's model/text/codec, few-step sampler, no CFG."""
        r: PrestoSRecipe = self.recipe
        t = self.teacher_meta
        edm = dict(t.get("edm") or {})
        rho = float(r.distill.rho if r.distill.rho is not None else edm.get("rho", 7.0))
        steps = int(r.distill.gen_steps)
        edm.update(sampler="fewstep", steps=steps, cfg=1.0)
        meta = {k: v for k, v in t.items() if k not in ("kind", "version", "created", "name")}
        meta.update(kind=self.kind, name=r.name or f"{t.get('name', 'teacher')}-presto-s",
                    edm=edm, sampler={"name": "fewstep", "steps": steps, "cfg": 1.0, "rho": rho},
                    teacher=self.teacher_path, distill=recipe_to_dict(r.distill),
                    real_score_cfg=self.model.w)
        return meta

    def export(self, path: Path) -> None:
        gen = self.model.export_generator()
        tensors = prefixed({k: v.float() for k, v in gen.net.state_dict().items()}, "dit")
        tensors.update(self.codec_tensors)
        save_artefact(path, tensors, self.export_meta())

    def describe(self) -> dict:
        return {**self.recipe.describe(), "real_score_cfg": self.model.w,
                "generator_params": sum(p.numel() for p in self.model.generator.parameters()),
                "head_params": sum(p.numel() for p in self.model.head.parameters())}
