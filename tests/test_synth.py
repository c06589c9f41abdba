"""Synthetic corpus captions: diversity, determinism, the held-out split's unseen moods and wordings,
and the paraphrase evaluation set (assets/paraphrase_prompts.jsonl) kept out of the caption generator."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from presto_cli.data import synth
from presto_cli.data.synth import captions, plan, vocab
from presto_cli.prompts import read_prompts

ASSETS = Path(synth.__file__).resolve().parents[2] / "assets"
PARAPHRASES = ASSETS / "paraphrase_prompts.jsonl"
# the development set (choosing conditioning rules, never reported; benchmarks/retrieval.py)
PARAPHRASES_DEV = Path(__file__).resolve().parents[1] / "benchmarks" / "paraphrase_dev.jsonl"
# a second, independently written reported set (everyday descriptions, no genre names)
PARAPHRASES2 = ASSETS / "paraphrase_prompts2.jsonl"
# words that carry no description of the music (the rest of a prompt are its key content words)
STOP = set("""a an the of and or with for in on at to from by like as that this it its is are be you your i me my
some something someone kind sort very all only no lots really those would up down under out through before while
where who what makes want help doing around playing play plays music d s""".split())


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower().replace("'", "")))


def _has(text: str, phrase: str) -> bool:
    return re.search(r"(?<![a-z0-9-])" + re.escape(phrase.lower()) + r"(?![a-z0-9-])", text.lower()) is not None


def _by_style(n_seeds: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {s.name: [] for s in synth.STYLES}
    for seed in range(n_seeds):
        for i in range(len(synth.STYLES)):
            p = synth.plan_clip(seed, i)
            out[p["labels"]["style"]].append(p["caption"])
    return out


@pytest.fixture(scope="module")
def captions_200():
    return _by_style(200)


def test_same_seed_same_caption_and_the_wording_never_moves_the_music(monkeypatch):
    a = [synth.plan_clip(3, i) for i in range(28)]
    assert a == [synth.plan_clip(3, i) for i in range(28)]
    assert [p["caption"] for p in a] != [synth.plan_clip(4, i)["caption"] for i in range(28)]
    labels = {**a[0]["labels"]}
    assert captions.train_caption(labels, plan._rng(1, 2)) == captions.train_caption(labels, plan._rng(1, 2))
    # captions come from their own stream: replacing the generator changes nothing else in the plan
    monkeypatch.setattr(plan, "train_caption", lambda labels, rng: "x")
    b = [synth.plan_clip(3, i) for i in range(28)]
    assert all(p["caption"] == "x" for p in b)
    assert [{**p, "caption": None} for p in a] == [{**p, "caption": None} for p in b]


def test_captions_are_diverse_within_each_style(captions_200):
    for style, caps in captions_200.items():
        assert len(set(caps)) >= 180, (style, len(set(caps)))  # 200 clips of a style
        lengths = [len(c.split()) for c in caps]
        assert min(lengths) <= 3 and max(lengths) >= 20, style  # short queries and long sentences
        names = Counter(n for c in caps for n in vocab.NAMES[style] if _has(c, n))
        assert len(names) >= 4, (style, names)
        chunks = [max(e.split("{mood}"), key=len).strip(" ,") for e in vocab.EVERYDAY[style]]
        everyday = [e for e in chunks if any(e.lower() in c.lower() for c in caps)]
        assert len(everyday) >= 3, style
        st = synth.STYLE_BY_NAME[style]
        synonyms = {w for m in st.moods for w in vocab.MOOD_WORDS[m][1:]}
        assert sum(any(_has(c, w) for w in synonyms) for c in caps) >= 40, style


def test_everyday_phrasings_and_synonyms_reach_the_captions(captions_200):
    joined = {s: "\n".join(c) for s, c in captions_200.items()}
    for style, phrase in (("lofi_hiphop", "beats to study to"), ("chiptune", "old-school video game music"),
                          ("classical_piano", "piano music"), ("jazz_trio", "double bass"),
                          ("reggae", "Jamaican"), ("drum_and_bass", "DnB"), ("ambient", "music for meditation")):
        assert _has(joined[style], phrase), (style, phrase)


def test_mood_words_reach_no_other_field_of_their_style():
    """The held-out split hides one mood per style: none of its words may enter that style's training
    captions through another mood's synonyms or through names, traits, everyday phrases or nouns."""
    for st in synth.STYLES:
        groups = [set(vocab.MOOD_WORDS[m]) for m in st.moods]
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                assert not groups[i] & groups[j], (st.name, groups[i] & groups[j])
        instruments = {w for p in st.parts for g in p.programs for w in vocab.INSTRUMENT_WORDS[synth.GM[g]]}
        instruments |= {w for _, kit in st.kits for w in vocab.INSTRUMENT_WORDS[kit]}
        other = "\n".join(vocab.NAMES[st.name] + vocab.TRAITS[st.name] + vocab.EVERYDAY[st.name] + st.nouns
                          + vocab.COMMON_NOUNS + tuple(instruments))
        for g in groups:
            assert not [w for w in g if _has(other, w)], (st.name, [w for w in g if _has(other, w)])


def test_heldout_captions_use_moods_and_wordings_training_never_sees():
    n, seed = 700, 5
    held = synth.heldout_indices(seed, n, 0.2)
    plans = [synth.plan_clip(seed, i, heldout=i in held, use_heldout=True) for i in range(n)]
    train = [p for p in plans if p["split"] == "train"]
    test = [p for p in plans if p["split"] == "heldout"]
    assert {p["caption"] for p in train}.isdisjoint(p["caption"] for p in test)
    for p in test:
        style = p["labels"]["style"]
        words = vocab.MOOD_WORDS[p["labels"]["mood"]]
        leaks = [q["caption"] for q in train if q["labels"]["style"] == style and any(_has(q["caption"], w) for w in words)]
        assert not leaks, (style, p["labels"]["mood"], leaks[:2])
    for phrase in ("moment:", "built around"):  # the held-out templates' wordings
        assert not any(phrase in q["caption"] for q in train)
        assert any(phrase in p["caption"] for p in test)


@pytest.mark.parametrize("path", [PARAPHRASES, PARAPHRASES_DEV, PARAPHRASES2], ids=["reported", "dev", "reported2"])
def test_paraphrase_set_schema_works_with_the_prompt_loader_and_adherence_styles(path):
    rows = read_prompts(path)
    per_style = Counter(r["style"] for r in rows)
    assert set(per_style) == {s.name for s in synth.STYLES} and min(per_style.values()) >= 5
    assert len({r["name"] for r in rows}) == len(rows) and all(isinstance(r["seed"], int) for r in rows)
    from presto_cli.eval.evaluate import style_texts  # what `presto eval --metrics adherence` uses

    table = style_texts(str(ASSETS / "styles.json"), "", sorted(per_style))
    assert set(per_style) <= set(table)


def test_the_dev_paraphrases_are_not_the_reported_ones():
    dev = {r["prompt"].lower() for r in read_prompts(PARAPHRASES_DEV)}
    assert dev.isdisjoint(r["prompt"].lower() for r in read_prompts(PARAPHRASES))


def test_the_second_reported_paraphrases_share_no_prompt_with_the_other_sets():
    mine = {r["prompt"].lower() for r in read_prompts(PARAPHRASES2)}
    assert len(mine) == len(read_prompts(PARAPHRASES2))
    for other in (PARAPHRASES, PARAPHRASES_DEV):
        shared = mine & {r["prompt"].lower() for r in read_prompts(other)}
        assert not shared, f"{len(shared)} prompt(s) of {PARAPHRASES2.name} also in {other.name}"


@pytest.mark.parametrize("path", [PARAPHRASES, PARAPHRASES_DEV, PARAPHRASES2], ids=["reported", "dev", "reported2"])
def test_paraphrase_set_is_not_in_the_caption_generators_words(path):
    rows = read_prompts(path)
    caps = [synth.plan_clip(s, s)["caption"] for s in range(5000)]
    assert {c.lower() for c in caps}.isdisjoint(r["prompt"].lower() for r in rows)
    cap_words = [_words(c) for c in caps]
    vocabulary = set().union(*cap_words)
    for r in rows:
        key = _words(r["prompt"]) - STOP
        assert len(key) >= 2, r["prompt"]
        assert not any(key <= w for w in cap_words), r["prompt"]  # no caption holds all its key words
        assert key - vocabulary, r["prompt"]  # and at least one of them no caption ever uses
