"""Stage ``text-adapter`` (``presto pretrain``): train the text adapter (:mod:`presto_cli.text.adapter`)
through a frozen teacher so that a plain-language description of a clip's music conditions the
teacher as the clip's training caption does (METHOD.md section 2, "Prompts as written").

One step, per clip of the teacher's training data: the input text is the clip's caption (with
probability ``adapter.p_caption``, so captions stay where they are) or a description composed from
the description table for the clip's group (``labels.<adapter.group>`` of its manifest row,
:mod:`presto_cli.text.descriptions`), sometimes with the clip's BPM or key written in it. Tempo and
key are what the text says, parsed as at inference, on both sides. With ``ln sigma ~ N(p_mean,
p_std^2)`` and ``x = x0 + sigma n``:

    loss = lambda(sigma) |D(x; sigma, adapter(enc(text))) - sg D(x; sigma, enc(caption))|^2

The teacher and the text encoder stay frozen; only the adapter learns. The exported artefact (kind
``text-adapter``) is put in front of any model of the teacher's chain with ``presto generate
--text-adapter FILE`` (none is bundled: on the demo it lowered adherence, METHOD.md section 2).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from presto_cli.errors import PrestoError
from presto_cli.recipes import BaseRecipe, recipe_to_dict, register_stage
from presto_cli.stages.common import DistillTask
from presto_cli.text.adapter import TextAdapter, TextAdapterConfig, adapter_to_artefact
from presto_cli.train.loop import EMA, build_adamw, ema_state, optimizer_step, register_task, warmup_lr

__all__ = ["TextAdapterRecipe", "TextAdapterTask", "AdapterTraining"]


@dataclass
class AdapterTraining:
    """The ``adapter:`` section."""

    descriptions: str = ""  # description table (JSON); "" = the package's assets/lay_descriptions.json
    group: str = "style"  # the manifest label that names a clip's group in the table (labels.<group> or a
    # column); "caption": the caption itself (toy data)
    p_caption: float = 0.25  # share of inputs that are the clip's own caption (kept where they are)
    p_bpm: float = 0.25  # share of descriptions that also name the clip's BPM ("around 96 bpm")
    p_key: float = 0.15  # ... and its key ("in E minor")
    p_mean: float = 0.4  # ln sigma ~ N(p_mean, p_std^2): the noise levels the adapter is trained at
    p_std: float = 1.4  # the spread of ln sigma

    def validate(self) -> None:
        for k in ("p_caption", "p_bpm", "p_key"):
            v = getattr(self, k)
            if not 0.0 <= v <= 1.0:
                raise PrestoError(f"adapter.{k} must lie in [0, 1], got {v}")
        if self.p_std <= 0:
            raise PrestoError(f"adapter.p_std must be positive, got {self.p_std}")


@register_stage("text-adapter")
@dataclass
class TextAdapterRecipe(BaseRecipe):
    model: TextAdapterConfig = field(default_factory=TextAdapterConfig)
    adapter: AdapterTraining = field(default_factory=AdapterTraining)
    toy_size: int = 4096  # points drawn when the teacher was trained on a toy mixture

    def validate(self) -> None:
        self.model.validate()
        self.adapter.validate()
        if not self.data.teacher:
            raise PrestoError("the text-adapter stage needs data.teacher (the teacher it is trained through)",
                              "pass data.teacher=PATH/model.safetensors")


class _Grouped(torch.utils.data.Dataset):
    """A dataset's items plus each clip's group, mood and labelled BPM/key: from its manifest row
    (a latent cache), or, with ``group: caption``, the caption itself is the group (toy data)."""

    def __init__(self, base, manifest: Path | None, group: str):
        from presto_cli.text.musical import row_tempo_key

        self.base, self.group = base, group
        self.extra = None
        if group == "caption" or not hasattr(base, "items"):
            return
        from presto_cli.data.folder import read_manifest

        rows = {str(r["path"]): r for r in read_manifest(manifest)} if manifest is not None and manifest.is_file() else {}
        self.extra = []
        for it in base.items:
            r = rows.get(str(it.get("path", "")), {})
            labels = r.get("labels") or {}
            g = labels.get(group, r.get(group))
            bpm, key = row_tempo_key(r) if r else (None, None)
            self.extra.append({"group": "" if g is None else str(g), "mood": str(labels.get("mood", r.get("mood", ""))),
                               "label_bpm": float("nan") if bpm is None else float(bpm),
                               "label_key": -1 if key is None else int(key)})

    def groups(self, n: int = 512) -> list[str]:
        """The groups of (up to ``n``) items, for checking the table knows them."""
        if self.extra is not None:
            return [e["group"] for e in self.extra]
        return [str(self.base[i]["caption"]) for i in range(min(n, len(self.base)))] if self.group == "caption" else []

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = self.base[i]
        if self.extra is not None:
            return {**item, **self.extra[i]}
        return {**item, "group": str(item["caption"]) if self.group == "caption" else "", "mood": "",
                "label_bpm": float("nan"), "label_key": -1}


@register_task("text-adapter")
class TextAdapterTask(DistillTask):
    def __init__(self, recipe: TextAdapterRecipe, ctx, run_dir: Path):
        super().__init__(recipe, ctx, run_dir, recipe.data.teacher,
                         "the text adapter is trained through a teacher", "data.teacher")
        from presto_cli.text.descriptions import DescriptionTable

        self.frozen.requires_grad_(False)
        text = self.teacher_meta.get("text", "minilm")
        dim = int(self.text.encoder.dim)
        if recipe.model.dim != dim:
            raise PrestoError(f"model.dim={recipe.model.dim} but the teacher's '{text}' text encoder gives {dim}",
                              f"set model.dim: {dim}")
        self.table = DescriptionTable.load(recipe.adapter.descriptions or None)
        self.adapter = TextAdapter(recipe.model).to(self.device)
        self.ema = EMA(self.adapter, recipe.train.ema) if recipe.train.ema > 0 else None
        self.opt = build_adamw(self.adapter.parameters(), recipe.train.lr, recipe.train)

    def make_dataset(self):
        if self._dataset is None:
            base = super().make_dataset()
            d = self.recipe.data
            manifest = Path(d.manifest) if d.manifest else (Path(d.path) / "manifest.jsonl" if d.path else None)
            self._dataset = _Grouped(base, manifest, self.recipe.adapter.group)
            if not any(g in self.table for g in self._dataset.groups()):
                raise PrestoError(f"no training clip's '{self.recipe.adapter.group}' label is a group of "
                                  f"{self.table.source}", "set adapter.group to the manifest label the table is keyed by")
        return self._dataset

    def describe(self) -> dict:
        return {"trainable_params": sum(p.numel() for p in self.adapter.parameters()),
                "descriptions": self.table.source, "groups": len(self.table.groups)}

    def texts(self, batch: dict, u: torch.Tensor) -> list[str]:
        """Each clip's input text: its caption or a description (see the module docstring)."""
        from presto_cli.text.musical import key_name

        a: AdapterTraining = self.recipe.adapter
        out = []
        for i, cap in enumerate(batch["caption"]):
            g = batch["group"][i]
            if g not in self.table or float(u[i, 0]) < a.p_caption:
                out.append(str(cap))
                continue
            t = self.table.compose(g, batch["mood"][i], [float(v) for v in u[i, 1:7]])
            bpm, key = float(batch["label_bpm"][i]), int(batch["label_key"][i])
            if bpm == bpm and float(u[i, 7]) < a.p_bpm:
                t += f", around {int(round(bpm))} bpm"
            if key >= 0 and float(u[i, 8]) < a.p_key:
                t += f", in {key_name(key)}"
            out.append(t)
        return out

    def adapted(self, cond):
        from dataclasses import replace

        tokens, mask, pooled = self.adapter(cond.tokens, cond.mask, cond.pooled)
        return replace(cond, tokens=tokens, mask=mask, pooled=pooled)

    def train_step(self, batch: dict, ctx) -> dict[str, float]:
        from presto_cli.diffusion.edm import edm_weight
        from presto_cli.text.musical import parse_prompt

        r: TextAdapterRecipe = self.recipe
        x0 = batch["latents"].to(self.device).float()
        G = ctx.global_batch
        u = ctx.rand("adapter.text", (G, 9)).cpu()
        texts = self.texts(batch, u)
        parsed = [parse_prompt(t) for t in texts]
        tempo = [float("nan") if b is None else float(b) for b, _ in parsed]
        key = [-1 if k is None else int(k) for _, k in parsed]
        sigma = torch.exp(r.adapter.p_mean + r.adapter.p_std * ctx.randn("adapter.sigma", (G,)))
        x = x0 + sigma.view(-1, 1, 1) * ctx.randn("adapter.noise", (G, *x0.shape[1:]))
        with torch.no_grad():
            target = self.frozen(x, sigma, self.text(list(batch["caption"]), self.device, tempo, key))
        self.adapter.train()
        with ctx.autocast():
            pred = self.frozen(x, sigma, self.adapted(self.text(texts, self.device, tempo, key)))
        w = edm_weight(sigma, self.frozen.cfg.sigma_data)
        per = w * (pred.float() - target.float()).pow(2).flatten(1).mean(1)
        loss = per.mean()
        tr = r.train
        gnorm = optimizer_step(self.opt, loss, [self.adapter], ctx, tr.grad_clip,
                               lr=warmup_lr(tr.lr, ctx.step, tr.warmup), ema=self.ema)
        is_cap = torch.tensor([t == c for t, c in zip(texts, batch["caption"])])
        out = {"loss": float(loss.detach()), "grad_norm": gnorm}
        if bool((~is_cap).any()):
            out["loss_described"] = float(per[~is_cap.to(per.device)].mean().detach())
        if bool(is_cap.any()):
            out["loss_caption"] = float(per[is_cap.to(per.device)].mean().detach())
        return out

    def state_dict(self) -> dict:
        return {"adapter": self.adapter.state_dict(), "opt": self.opt.state_dict(),
                "teacher_sha256": self.teacher_sha256, **ema_state(self.ema)}

    def load_state_dict(self, sd: dict) -> None:
        self.check_teacher(sd)
        self.adapter.load_state_dict(sd["adapter"])
        self.opt.load_state_dict(sd["opt"])
        if self.ema is not None and "ema" in sd:
            self.ema.load_state_dict(sd["ema"])

    def export(self, path: Path) -> None:
        from presto_cli.data.latents import file_sha256
        from presto_cli.io import save_artefact

        net = self.ema.shadow if self.ema is not None else self.adapter
        text = self.teacher_meta.get("text", "minilm")
        tensors, info = adapter_to_artefact(net, text)
        src = Path(self.table.source)
        meta = {"kind": "text-adapter", "text_adapter": info, "text": text, "run": self.recipe.name,
                "teacher": self.teacher_path, "teacher_sha256": self.teacher_sha256,
                "descriptions": {"path": str(src), "sha256": file_sha256(src) if src.is_file() else None},
                "adapter": recipe_to_dict(self.recipe.adapter)}
        save_artefact(path, tensors, meta)
