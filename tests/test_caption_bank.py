"""Nearest-training-caption prompt matching (presto_cli/text/caption_bank.py): a known-answer test
on the weightless hash encoder, storage, and the generate/eval path on the tiny audio chain."""
import json

import pytest
import torch

from presto_cli.errors import PrestoError
from presto_cli.text.caption_bank import CaptionBank
from presto_cli.text.encoders import HashTextEncoder

from conftest import presto

CAPTIONS = ["fast techno for a dark club", "chilled reggae for a beach party", "slow string quartet in a concert hall",
            "jazz trio with brushed drums", "chilled reggae for a beach party"]  # one duplicate


def test_nearest_caption_is_the_one_sharing_the_most_words():
    enc = HashTextEncoder()
    bank = CaptionBank.build(CAPTIONS, enc)
    assert len(bank) == 4 and bank.text == "hash"  # duplicates dropped
    queries = ["a beach party with reggae", "dark techno club", "jazz trio with brushed drums",
               "string quartet playing slow"]
    idx, sim = bank.match(enc(queries)[2])
    got = [bank.captions[i] for i in idx]
    assert got == ["chilled reggae for a beach party", "fast techno for a dark club",
                   "jazz trio with brushed drums", "slow string quartet in a concert hall"]
    assert sim[2] == pytest.approx(1.0, abs=1e-5)  # a training caption matches itself
    assert all(s < 0.99 for k, s in enumerate(sim) if k != 2)
    # the similarity is the cosine of the pooled vectors: against a brute-force recomputation
    q = torch.nn.functional.normalize(enc(queries)[2], dim=-1)
    b = torch.nn.functional.normalize(enc(bank.captions)[2], dim=-1)
    assert torch.allclose(torch.tensor(sim), (q @ b.T).max(1).values, atol=1e-5)


def test_threshold_is_a_quantile_of_the_captions_nearest_neighbour_similarity():
    # three unit vectors: e1 and (e1 + e2)/sqrt(2) are each other's nearest (cosine 1/sqrt(2)); e3's is 0
    v = torch.tensor([[1.0, 0, 0], [2 ** -0.5, 2 ** -0.5, 0], [0, 0, 1.0]])
    # sorted nearest-neighbour similarities [0, 0.707, 0.707]: the 5% quantile interpolates 0.1 of the way
    assert CaptionBank.ood_threshold(v) == pytest.approx(0.1 * 2 ** -0.5, abs=1e-4)
    assert CaptionBank.ood_threshold(v, quantile=0.5) == pytest.approx(2 ** -0.5, abs=1e-4)
    assert CaptionBank.ood_threshold(v, chunk=1) == CaptionBank.ood_threshold(v)  # chunking changes nothing
    assert CaptionBank(["a", "b", "c"], v, "x").threshold == pytest.approx(0.0707, abs=1e-4)


def test_subsample_is_seeded_and_storage_roundtrips(tmp_path):
    enc = HashTextEncoder()
    caps = [f"caption number {i}" for i in range(10)]
    a = CaptionBank.build(caps, enc, max_captions=3, seed=1)
    assert len(a) == 3 and a.captions == CaptionBank.build(caps, enc, max_captions=3, seed=1).captions
    assert a.captions != CaptionBank.build(caps, enc, max_captions=3, seed=2).captions
    assert CaptionBank.build(caps, enc, max_captions=0) is None and CaptionBank.build(["  "], enc) is None
    a.save(tmp_path / "bank.safetensors")
    b = CaptionBank.load(tmp_path / "bank.safetensors")
    assert b.captions == a.captions and b.text == "hash"
    assert torch.allclose(b.pooled, a.pooled, atol=1e-3)  # stored as fp16
    with pytest.raises(PrestoError, match="caption bank"):
        CaptionBank(["a", "b"], torch.zeros(3, 4), "hash")
    with pytest.raises(PrestoError, match="384-d"):
        a.match(torch.ones(1, 8))


@pytest.mark.slow
def test_generate_conditions_on_the_nearest_training_caption(tiny_chain, tmp_path):
    from presto_cli.data.folder import read_manifest
    from presto_cli.io import read_artefact_meta

    m = tiny_chain["teacher"]
    bank = read_artefact_meta(m)["caption_bank"]
    train = {r["caption"] for r in read_manifest(tiny_chain["data"] / "manifest.jsonl")
             if r.get("split", "train") == "train"}
    assert set(bank["captions"]) == train and bank["text"] == "hash"

    # the tiny bank's own threshold (hash-encoder captions share few words) is near 0.08: a copy of the
    # teacher with threshold 0.5 makes "unlike every training wording" clear-cut for this test
    from presto_cli.io import load_artefact, save_artefact

    tensors, meta = load_artefact(m)
    assert 0 < meta["caption_bank"]["threshold"] < 1
    meta["caption_bank"]["threshold"] = 0.5
    save_artefact(tmp_path / "t05.safetensors", tensors, meta)
    args = ["--model", tmp_path / "t05.safetensors", "--seed", 5, "--duration", 0.3, "--steps", 2]
    presto("generate", "some music please", "-o", tmp_path / "a.wav", *args)
    side = json.loads((tmp_path / "a.wav.json").read_text())
    assert side["prompt"] == "some music please" and side["condition"] in train
    assert 0 < side["match_similarity"] < 0.5  # unlike every training wording: matched
    # matching = conditioning on that caption as written: the same audio, bit for bit
    presto("generate", side["condition"], "-o", tmp_path / "b.wav", *args, "--no-match")
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    nm = json.loads((tmp_path / "b.wav.json").read_text())
    assert nm["condition"] == side["condition"] and nm["match_similarity"] is None

    # the same decisions in process (no subprocess start-up per case)
    from presto_cli.pipeline import load_pipeline

    pipe = load_pipeline(str(tmp_path / "t05.safetensors"), "cpu")
    cap = max(train, key=len)
    near = cap.rsplit(" ", 1)[0] + " please"  # a training caption with its last word changed
    kept, = pipe.conditions([near])
    assert kept["condition"] == near and kept["match_similarity"] >= 0.5  # close to it: kept as written
    assert pipe.conditions([near], match=True)[0]["condition"] == cap  # --match: rewritten all the same
    kw = dict(steps=2, duration=0.3)
    as_written = pipe.generate(["some music please"], [5], match=False, **kw)
    matched = pipe.generate(["some music please"], [5], **kw)
    assert not torch.equal(as_written, matched)

    # a model without a caption bank: prompts are used as written, and --match is refused
    meta.pop("caption_bank")
    save_artefact(tmp_path / "nobank.safetensors", {k: v for k, v in tensors.items()
                                                    if not k.startswith("caption_bank.")}, meta)
    bare = load_pipeline(str(tmp_path / "nobank.safetensors"), "cpu")
    assert bare.bank is None and torch.equal(bare.generate(["some music please"], [5], **kw), as_written)
    r = presto("generate", "x", "-o", tmp_path / "e.wav", "--model", tmp_path / "nobank.safetensors", *args[2:],
               "--match", check=False)
    assert r.returncode == 2 and "no caption bank" in r.stderr and not (tmp_path / "e.wav").exists()


def test_a_prompt_no_caption_is_near_is_kept_as_written(monkeypatch):
    """The floor (text/caption_bank.py MATCH_FLOOR, per encoder): a prompt whose nearest caption is
    less similar than it is kept as written, by default and with --match; one between the floor and
    the bank's threshold is matched; one above the threshold is kept. Known cosines: unit vectors
    in the first two axes of the encoder's space."""
    from presto_cli.pipeline import bundled_models, load_pipeline
    from presto_cli.text.caption_bank import MATCH_FLOOR, CaptionBank

    if "demo-s" not in bundled_models():
        pytest.skip("demo-s is not bundled in this build")
    pipe = load_pipeline("demo-s", "cpu")
    dim = pipe.bank.pooled.shape[1]
    e = torch.eye(dim)[:2]
    floor = MATCH_FLOOR["minilm"]
    bank = CaptionBank(["caption a", "caption b"], e.clone(), "minilm", threshold=0.9)
    assert bank.floor == floor and CaptionBank(["x"], e[:1].clone(), "hash").floor == 0.0

    def query(c):  # cosine c with caption a, sqrt(1 - c^2) along an axis no caption uses
        v = torch.zeros(dim)
        v[0], v[2] = c, (1 - c * c) ** 0.5
        return v

    cos = {"far prompt": floor - 0.05, "near-ish prompt": floor + 0.05, "close prompt": 0.95}
    monkeypatch.setattr(pipe, "bank", bank)
    monkeypatch.setattr(pipe, "text", lambda ps: (None, None, torch.stack([query(cos[p]) for p in ps])))
    auto = {p: c["condition"] for p, c in zip(cos, pipe.conditions(list(cos)))}
    assert auto == {"far prompt": "far prompt", "near-ish prompt": "caption a", "close prompt": "close prompt"}
    forced = {p: c["condition"] for p, c in zip(cos, pipe.conditions(list(cos), match=True))}
    assert forced == {"far prompt": "far prompt", "near-ish prompt": "caption a", "close prompt": "caption a"}


def test_bundled_bank_keeps_sounds_the_corpus_lacks_and_matches_descriptions():
    """On the bundled MiniLM bank: a prompt about a sound the corpus lacks stays as written; a
    plain-language description of a corpus style is rewritten to a caption."""
    from presto_cli.pipeline import bundled_models, load_pipeline

    if "demo-s" not in bundled_models():
        pytest.skip("demo-s is not bundled in this build")
    pipe = load_pipeline("demo-s", "cpu")
    dog, lounge = pipe.conditions(["a dog barking", "four people playing violins and a cello in a fancy concert room"])
    assert dog["condition"] == "a dog barking" and dog["match_similarity"] < pipe.bank.floor
    assert lounge["condition"] in pipe.bank.captions
