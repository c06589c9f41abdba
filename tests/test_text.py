"""Text encoders: MiniLM semantics offline, hash determinism, CLAP's missing-extra error."""
import importlib.util

import pytest
import torch

from presto_cli.errors import PrestoError
from presto_cli.text.encoders import (HashTextEncoder, build_text_encoder, text_encoder_dim)


def cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_minilm_offline_semantics():
    enc = build_text_encoder("minilm")
    texts = ["a calm piano melody", "a gentle, relaxing piano tune",
             "aggressive heavy metal with distorted guitars", "fast drum and bass beat"]
    tok, mask, pooled = enc(texts)
    assert tok.shape[0] == 4 and tok.shape[2] == 384 == enc.dim and mask.dtype == torch.bool
    torch.testing.assert_close(pooled.norm(dim=1), torch.ones(4))
    para = cos(pooled[0], pooled[1])
    assert para > 0.7, para  # paraphrases agree
    for i in (2, 3):  # different styles do not
        assert cos(pooled[0], pooled[i]) < 0.5
        assert para - cos(pooled[0], pooled[i]) > 0.3
    # frozen, cached, deterministic, padding masked
    assert not any(p.requires_grad for p in enc.parameters())
    assert build_text_encoder("minilm") is enc
    tok1, mask1, pooled1 = enc(texts[:1])
    torch.testing.assert_close(pooled1[0], pooled[0], rtol=1e-4, atol=1e-5)
    assert int(mask[0].sum()) == int(mask1[0].sum()) < mask.shape[1]
    long = enc(["piano " * 200])
    assert long[0].shape[1] == 64  # max tokens


def test_hash_encoder_deterministic_bag_of_words():
    enc = HashTextEncoder()
    tok, mask, pooled = enc(["top left", "top right", "Top  LEFT", "bottom right"])
    torch.testing.assert_close(pooled[0], pooled[2])  # case and spacing do not matter
    assert cos(pooled[0], pooled[1]) > 0.3  # a shared word
    assert abs(cos(pooled[0], pooled[3])) < 0.3  # nothing shared
    assert mask.sum(1).tolist() == [2, 2, 2, 2]
    # same vectors in a fresh instance (seeded by SHA-256, not Python's hash)
    torch.testing.assert_close(HashTextEncoder()(["top left"])[2][0], pooled[0])
    assert text_encoder_dim("hash") == 384


def test_unknown_encoder_and_clap_errors(tmp_path):
    with pytest.raises(PrestoError, match="unknown text encoder"):
        build_text_encoder("minlm")
    with pytest.raises(PrestoError, match="checkpoint"):
        build_text_encoder("clap", checkpoint=str(tmp_path / "missing.pt"))
    if importlib.util.find_spec("laion_clap") is None:
        ck = tmp_path / "clap.pt"
        ck.write_bytes(b"x")
        with pytest.raises(PrestoError) as e:
            build_text_encoder("clap", checkpoint=str(ck))
        assert "presto-music[clap]" in str(e.value) and str(ck) in str(e.value)


def test_plain_torch_minilm_equals_transformers_bert():
    """presto_cli.text.bert (no transformers) reproduces transformers' BertModel + fast tokenizer:
    same token ids, same mask, last hidden states equal to ~1e-5 on texts of different lengths
    (padding included), and the same mean-pooled sentence vector."""
    transformers = pytest.importorskip("transformers")
    from presto_cli.text.encoders import _minilm_dir

    path = _minilm_dir()
    texts = ["jazz trio", "an upbeat jazz trio with walking bass and brushed drums",
             "Ambient PADS, slow & dreamy — café vibes", "piano " * 100, "x"]
    ref_tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    ref = transformers.BertModel.from_pretrained(str(path), local_files_only=True).eval()
    enc = ref_tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        want = ref(**enc).last_hidden_state
    ours = build_text_encoder("minilm")
    tokens, mask, pooled = ours(texts)
    assert torch.equal(mask, enc["attention_mask"].bool())
    from presto_cli.text.bert import tokenize

    ids, _ = tokenize(ours.tokenizer, texts)
    assert torch.equal(ids, enc["input_ids"])
    m = mask.unsqueeze(-1).float()
    torch.testing.assert_close(tokens * m, want * m, rtol=0, atol=2e-5)  # padded rows are unused
    ref_pooled = torch.nn.functional.normalize((want * m).sum(1) / m.sum(1), dim=-1)
    torch.testing.assert_close(pooled, ref_pooled, rtol=0, atol=1e-5)


def test_a_cut_prompt_is_reported(capsys):
    from presto_cli.runtime import console

    enc = build_text_encoder("minilm")
    with console.capture() as cap:
        enc(["a calm piano melody"])
    assert "ignored" not in cap.get()
    with console.capture() as cap:
        tok, _, _ = enc(["short", "piano " * 100])
    out = " ".join(cap.get().split())  # the console wraps long lines
    assert tok.shape[1] == 64 and "text 2" in out and "64 tokens; the rest of it is ignored" in out, out
