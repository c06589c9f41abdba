"""What the distillation stages (Presto-S, ASE, Presto-L, Presto-LS) share: the frozen teacher
with its text conditioning, the data they train on, and the resume check on the teacher file."""
from __future__ import annotations

from pathlib import Path

from presto_cli.data.toy import ToyDataset
from presto_cli.errors import PrestoError
from presto_cli.train.loop import Task


def distillation_dataset(recipe, teacher_meta: dict, device, teacher_tensors: dict | None = None):
    """The data a distillation stage trains on: the teacher's toy mixture, or the latent cache of
    ``data.path`` under the teacher's codec (``data.codec`` or the one it was trained with). With
    ``teacher_tensors`` (the teacher's, its embedded codec among them) a ``data.codec`` other than the
    teacher's own is refused: the student would learn another codec's latents and be exported with
    the teacher's codec to decode them."""
    if teacher_meta.get("toy"):
        return ToyDataset(teacher_meta["toy"], n=recipe.toy_size, seed=recipe.seed)
    from presto_cli.data.latents import LatentDataset, ensure_latent_cache

    inherited = teacher_meta.get("data") or {}
    if not recipe.data.path and inherited.get("path"):  # the teacher's data, clips of its length
        recipe.data.path = inherited["path"]
        recipe.data.manifest = inherited.get("manifest", "")
        recipe.data.clip_seconds = float(inherited["clip_seconds"])
    codec = recipe.data.codec or teacher_meta.get("codec_source", "")
    if not recipe.data.path or not codec:
        raise PrestoError(f"the {recipe.stage} stage needs data.path (the audio the teacher was "
                          "trained on) and data.codec", "copy the data section of the teacher's recipe")
    if teacher_tensors is not None:
        check_same_codec(codec, teacher_tensors, "data.codec" if recipe.data.codec else "codec_source")
    return LatentDataset(ensure_latent_cache(codec, recipe.data, device))


def check_same_codec(codec_path: str | Path, teacher_tensors: dict, what: str = "data.codec") -> None:
    """Refuse a codec file whose weights are not the codec embedded in the teacher (compared tensor
    by tensor, within fp16 rounding, so a bundled fp16 teacher matches the fp32 codec it was trained
    on). ``what`` names where the file came from: "data.codec" (the recipe) or "codec_source" (the
    teacher's metadata, when data.codec is empty). Nothing to compare when the teacher embeds no
    codec or the file is missing (the latent cache then says what is missing)."""
    import torch

    from presto_cli.io import load_artefact, sub_state

    embedded = sub_state(teacher_tensors, "codec")
    if not embedded or not Path(codec_path).is_file():
        return
    tensors, meta = load_artefact(codec_path)
    state = tensors if meta.get("kind") == "codec" else sub_state(tensors, "codec")

    def same(a, b) -> bool:
        if a.shape != b.shape:
            return False
        if not (a.is_floating_point() and b.is_floating_point()):
            return bool(torch.equal(a, b))
        return bool(torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-3))

    shared = set(state) & set(embedded)  # an older file may lack a buffer added since
    if not shared or not all(same(state[k], embedded[k]) for k in shared):
        if what == "data.codec":
            fix = "leave data.codec empty (the teacher's own codec is used), or distil a teacher trained on this codec"
        else:
            fix = "the file changed since the teacher was trained: set data.codec to the codec it was trained on"
        label = "data.codec" if what == "data.codec" else "the teacher's codec_source"
        raise PrestoError(f"{label} {codec_path} is not the codec the teacher was trained on (its weights "
                          "differ from the codec inside the teacher file), so the student would learn "
                          "that codec's latents and decode them with the teacher's", fix)


def check_same_teacher(state: dict, path: str | Path, sha256: str) -> None:
    """Refuse to resume a distillation run against a teacher file that changed since it started
    (checkpoints from before this check carry no digest and are accepted)."""
    old = state.get("teacher_sha256")
    if old is not None and old != sha256:
        raise PrestoError(f"the teacher {path} is not the file this run started with (SHA-256 "
                          f"{sha256[:12]} != {old[:12]})",
                          "resume with the original teacher, or start a new run in another --out folder")


class DistillTask(Task):
    """Base of the distillation tasks: loads the frozen teacher (``self.frozen``: its denoiser;
    ``teacher_meta``, ``teacher_path``, ``teacher_sha256``, ``codec_tensors`` copied into the
    student's artefact, ``text``: a caption cache on the teacher's encoder), trains on the teacher's
    data, and refuses to resume against a changed teacher file (:meth:`check_teacher`)."""

    def __init__(self, recipe, ctx, run_dir: Path, teacher_path: str, purpose: str, key: str):
        super().__init__(recipe, ctx, run_dir)
        from presto_cli.data.latents import file_sha256
        from presto_cli.diffusion.artefact import load_teacher
        from presto_cli.text.cache import TextCache
        from presto_cli.text.encoders import build_text_encoder

        self.device = ctx.device
        self.frozen, meta, tensors = load_teacher(teacher_path, self.device)
        if meta.get("kind") != "teacher":
            raise PrestoError(f"{teacher_path} is a '{meta.get('kind')}' artefact; {purpose}",
                              f"point {key} at a `presto pretrain` output")
        self.teacher_meta = meta
        self.teacher_path = str(teacher_path)
        self.teacher_sha256 = file_sha256(teacher_path)
        # carried into the student's artefact: the codec, the caption bank and the training latents' range
        # (meta["caption_bank"] and meta["latent_range"] come along with the teacher's metadata)
        self.codec_tensors = {k: v for k, v in tensors.items()
                              if k.startswith(("codec.", "caption_bank.", "latent_range."))}
        self.text = TextCache(build_text_encoder(meta.get("text", "minilm"), device=self.device))
        self._dataset = None

    def make_dataset(self):
        if self._dataset is None:
            self._dataset = distillation_dataset(self.recipe, self.teacher_meta, self.device,
                                                 self.codec_tensors)
        return self._dataset

    def check_teacher(self, state: dict) -> None:
        check_same_teacher(state, self.teacher_path, self.teacher_sha256)
