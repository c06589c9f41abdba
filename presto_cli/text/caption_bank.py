"""Nearest-training-caption prompt matching (METHOD.md section 2, "Prompts in a person's words").

A model only knows the wordings it was trained on. A prompt in a person's words ("music for lying
in a hammock on a Caribbean beach") lands where the model has never been conditioned, while the
frozen sentence encoder already places it near the training captions of the right style (for 85%
of the bundled paraphrase set, 99% of the held-out prompts). So a generator artefact keeps its
*caption bank*: the unique captions of its training split (at most ``MAX_CAPTIONS``, a seeded
subsample beyond that) with their pooled text-encoder vectors, and sampling conditions on the
caption nearest to the prompt by cosine similarity (a retrieval form of prompt rewriting) when the
prompt is unlike the training wordings but near enough to one of them (at least :data:`MATCH_FLOOR`:
a prompt about something the corpus does not hold is no match for any caption and is kept as written): its nearest caption is less similar than ``threshold``, the
``OOD_QUANTILE`` quantile of the training captions' own nearest-neighbour similarities (each
caption against the others). A prompt as close to a training caption as 95% of them are to each
other is in the model's vocabulary and kept as written, details (tempo, key, instruments)
included; rewriting every prompt collapses many onto a few captions (96 held-out prompts onto 46)
and costs FAD. The choice is recorded in every output's sidecar (``condition``,
``match_similarity``); ``--match`` rewrites every prompt, ``--no-match`` none.

Stored in an artefact as the tensor ``caption_bank.pooled`` [N, dim] and ``meta["caption_bank"]``
(``captions``, ``text``: the encoder). The bundled models share one file,
``assets/demo-captions.safetensors`` (kind ``caption-bank``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from presto_cli.errors import PrestoError

__all__ = ["CaptionBank", "MATCH_FLOOR", "MAX_CAPTIONS", "PREFIX"]

MAX_CAPTIONS = 4096
PREFIX = "caption_bank."
OOD_QUANTILE = 0.05
# A prompt whose nearest caption is less similar than this is about something the training set does not
# hold ("a dog barking" against the demo corpus: 0.33; a user's "a slow low drone" against 28 captions
# of other moods: 0.19): no caption stands in for it, so it is kept as written, with --match too.
# Per text encoder (cosines are not comparable across encoders); chosen on benchmarks/paraphrase_dev.jsonl
# (every one of its 70 descriptions has a nearest caption at 0.42 or more, of its own style for 87%)
# and 16 prompts of sounds the corpus lacks (0.33-0.64; below 0.40: barking, white noise, didgeridoo,
# spoken word); METHOD.md section 2, "Nearest-caption matching".
MATCH_FLOOR = {"minilm": 0.40}


@dataclass
class CaptionBank:
    captions: list[str]
    pooled: Tensor  # [N, dim], L2-normalised rows, float32
    text: str  # the text encoder that made ``pooled`` (must be the model's)
    threshold: float | None = None  # below it a prompt is matched; None: computed from the bank

    def __post_init__(self):
        if self.pooled.dim() != 2 or self.pooled.shape[0] != len(self.captions) or not self.captions:
            raise PrestoError(f"a caption bank needs one vector per caption: {len(self.captions)} captions, "
                              f"vectors of shape {tuple(self.pooled.shape)}",
                              "re-export the model (its caption bank is damaged)")
        self.pooled = torch.nn.functional.normalize(self.pooled.float(), dim=-1)
        if self.threshold is None:
            self.threshold = self.ood_threshold(self.pooled)

    @staticmethod
    def ood_threshold(pooled: Tensor, quantile: float = OOD_QUANTILE, chunk: int = 1024) -> float:
        """The ``quantile`` of each caption's cosine similarity to its nearest other caption (1.0,
        i.e. match every prompt, for a bank of one caption)."""
        n = pooled.shape[0]
        if n < 2:
            return 1.0
        nn = torch.cat([(pooled[a:a + chunk] @ pooled.T).index_put_(
            (torch.arange(min(chunk, n - a)), torch.arange(a, min(a + chunk, n))), torch.tensor(-2.0)).max(1).values
            for a in range(0, n, chunk)])
        return round(float(nn.quantile(quantile)), 4)

    @property
    def floor(self) -> float:
        """The cosine below which no caption stands in for a prompt (:data:`MATCH_FLOOR`; 0 for
        an encoder without one)."""
        return float(MATCH_FLOOR.get(self.text, 0.0))

    def __len__(self) -> int:
        return len(self.captions)

    @classmethod
    def build(cls, captions, encoder, max_captions: int = MAX_CAPTIONS, seed: int = 0,
              batch: int = 128) -> "CaptionBank | None":
        """The bank of ``captions`` (duplicates and blanks dropped; sorted, then a seeded subsample
        of ``max_captions`` when there are more) encoded with ``encoder``; None when empty."""
        uniq = sorted({str(c).strip() for c in captions if str(c).strip()})
        if max_captions <= 0 or not uniq:
            return None
        if len(uniq) > max_captions:
            g = torch.Generator().manual_seed(seed)
            keep = sorted(torch.randperm(len(uniq), generator=g)[:max_captions].tolist())
            uniq = [uniq[i] for i in keep]
        pooled = torch.cat([encoder(uniq[i:i + batch])[2].cpu() for i in range(0, len(uniq), batch)])
        return cls(uniq, pooled, getattr(encoder, "name", ""))

    # -- storage ---------------------------------------------------------------------------
    def to_artefact(self) -> tuple[dict[str, Tensor], dict]:
        return {PREFIX + "pooled": self.pooled.clone()}, {"captions": list(self.captions), "text": self.text,
                                                          "threshold": self.threshold}

    @classmethod
    def from_artefact(cls, tensors: dict[str, Tensor], meta: dict) -> "CaptionBank | None":
        info = meta.get("caption_bank")
        vec = tensors.get(PREFIX + "pooled")
        if not info or vec is None:
            return None
        return cls(list(info.get("captions", [])), vec, str(info.get("text", "")), info.get("threshold"))

    def save(self, path: str | Path, **extra) -> None:
        from presto_cli.io import save_artefact

        tensors, info = self.to_artefact()
        save_artefact(path, tensors, {"kind": "caption-bank", "caption_bank": info, **extra},
                      dtype=torch.float16)

    @classmethod
    def load(cls, path: str | Path) -> "CaptionBank":
        from presto_cli.io import load_artefact

        tensors, meta = load_artefact(path)
        bank = cls.from_artefact(tensors, meta)
        if meta.get("kind") != "caption-bank" or bank is None:
            raise PrestoError(f"{path} is not a caption bank", "make one with benchmarks/bundle.py")
        return bank

    # -- matching --------------------------------------------------------------------------
    def match(self, pooled: Tensor) -> tuple[list[int], list[float]]:
        """For each query vector [B, dim]: the index of the nearest caption and its cosine similarity."""
        q = torch.nn.functional.normalize(pooled.float().cpu(), dim=-1)
        if q.shape[-1] != self.pooled.shape[-1]:
            raise PrestoError(f"the caption bank holds {self.pooled.shape[-1]}-d vectors but the text "
                              f"encoder gives {q.shape[-1]}-d ones", "use --no-match, or re-export the model")
        sim, idx = (q @ self.pooled.T).max(dim=1)
        return idx.tolist(), sim.tolist()
