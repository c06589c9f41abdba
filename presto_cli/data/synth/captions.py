"""Captions: a clip's structured labels -> the text it is trained (or evaluated) with.

Training captions (:func:`train_caption`) say the same clip in many ways, drawn from the clip's own
random stream: short queries ("smoky jazz trio"), tag lists, everyday phrases ("chill beats to study
to", "old-school video game music") and long sentences with key and tempo, each filled with
synonyms of the style's name, the mood and the instruments (:mod:`.vocab`). Held-out captions keep
the two :data:`HELDOUT_TEMPLATES` filled with the label words (:func:`make_caption`): wordings and
moods that no training caption uses.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from presto_cli.data.synth.styles import KEY_WORDS, STYLE_BY_NAME
from presto_cli.data.synth.vocab import (COMMON_NOUNS, EVERYDAY, INSTRUMENT_WORDS, MOOD_WORDS, NAMES, TEMPO_WORDS,
                                         TRAITS)

# The original training templates (kept among the training forms) and the held-out ones: those two
# are never used in training.
TRAIN_TEMPLATES = (
    "{Art} {mood} {title} {noun} with {instruments}, in {key} {mode}, {tempo} BPM.",
    "{Title} in {key} {mode} at {tempo} BPM: {instruments}. The mood is {mood}.",
    "{Tempo_word} {title} {noun} featuring {instruments}; {mood} feel, {key} {mode}, {tempo} BPM.",
    "{Instruments} play {art} {mood} {title} {noun} {extra}, {key} {mode}, {tempo} bpm.",
    "{Art} {title} {noun} {extra}. {Instruments}. {Key} {mode}, {tempo} BPM, {mood}.",
)
HELDOUT_TEMPLATES = (
    "Music for a {mood} moment: {title} at {tempo} BPM in {key} {mode}, played on {instruments}.",
    "{tempo} BPM {key} {mode} {title}, {mood}, built around {instruments}.",
)


def _article(word: str) -> str:
    return "An" if word[:1].lower() in "aeiou" else "A"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _tempo_word(bpm: int) -> str:
    return "Slow" if bpm < 80 else "Mid-tempo" if bpm < 110 else "Upbeat" if bpm < 140 else "Fast"


def make_caption(labels: dict[str, Any], template: str) -> str:
    """Fill a caption template (the held-out ones) from a clip's structured labels, in the label words."""
    st = STYLE_BY_NAME[labels["style"]]
    key = KEY_WORDS.get(labels["key"], labels["key"])
    noun = labels.get("noun", st.nouns[0])
    instr = _join(labels["instruments"])
    fields = dict(mood=labels["mood"], title=st.title, noun=noun, instruments=instr,
                  key=key, mode=labels["mode"], tempo=labels["tempo"], extra=st.extra,
                  Title=st.title[:1].upper() + st.title[1:], Key=key,
                  Instruments=instr[:1].upper() + instr[1:], Tempo_word=_tempo_word(labels["tempo"]))
    after = template[len("{Art} "):].split("}", 1)[0].lstrip("{") if template.startswith("{Art} ") else ""
    fields["Art"] = _article(str(fields.get(after, st.title)))
    text = template.format(**fields)
    return " ".join(text.replace(" ,", ",").replace(" .", ".").split())



# Training forms beyond TRAIN_TEMPLATES: short queries, tag lists, sentences. Fields: name (a name of
# the style), mood (a word for the clip's mood), noun, instruments, lead (one instrument), trait,
# everyday (an everyday phrase, mood filled in), tempo_word, bpm, key, mode; a capital first letter
# (Name, Everyday, Lead) capitalises the field; {Art}/{art} become a/an for the word after them.
SHORT_FORMS = (
    "{mood} {name}",
    "{mood} {name} {noun}",
    "{everyday}",
    "{everyday}",
    "{name} with {lead}",
    "{tempo_word} {mood} {name}",
    "{name}, {mood}",
    "{name}",
    "{mood} {name} with {instruments}",
)
TAG_FORMS = (
    "{name}, {mood}, {bpm} bpm",
    "{name}; {instruments}; {mood}; {key} {mode}",
    "{name} | {mood} | {tempo_word} | {instruments}",
    "genre: {name}. mood: {mood}. instruments: {instruments}. tempo: {bpm} BPM.",
    "{mood}, {tempo_word}, {name}, {lead}",
)
SENTENCE_FORMS = (
    "{Art} {mood} {name} {noun} with {instruments}.",
    "{Everyday}, with {instruments}.",
    "{Name} {trait}, {mood} and {tempo_word}.",
    "{Art} {tempo_word}, {mood} {name} {noun} {trait}.",
    "{Everyday}. {Art} {name} {noun} {trait}, with {instruments} at {bpm} BPM in {key} {mode}.",
    "This {mood} {name} {noun} features {instruments} {trait}; it is in {key} {mode} at {bpm} BPM.",
    "{Everyday} {trait}.",
    "{Art} {name} {noun} that feels {mood}, {trait}.",
    "{Lead} leads {art} {mood} {name} {noun} {trait}.",
)
TRAIN_FORMS = SHORT_FORMS + TAG_FORMS + SENTENCE_FORMS + TRAIN_TEMPLATES


def _pick(rng: np.random.Generator, options) -> Any:
    return options[int(rng.integers(len(options)))]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _an(word: str) -> bool:
    w = word.lower()
    if w[:1].isdigit():
        return w.startswith(("8", "11", "18"))
    return w[:1] in "aeiou" and not w.startswith(("one", "uni", "use", "eu"))


def _articles(text: str) -> str:
    """``\x01A word`` / ``\x01a word`` -> ``A(n) word`` / ``a(n) word``."""
    return re.sub(r"\x01([Aa]) (\S+)", lambda m: m[1] + ("n " if _an(m[2]) else " ") + m[2], text)


def _instrument_list(rng: np.random.Generator, instruments: list[str]) -> list[str]:
    """All the clip's instruments or a subset (order kept), each named by one of its synonyms."""
    idx = range(len(instruments))
    if len(instruments) > 1 and rng.random() < 0.5:
        k = int(rng.integers(1, len(instruments)))
        idx = sorted(int(i) for i in rng.choice(len(instruments), size=k, replace=False))
    out: list[str] = []
    for i in idx:
        word = _pick(rng, INSTRUMENT_WORDS.get(instruments[i], (instruments[i],)))
        if word not in out:
            out.append(word)
    return out


def train_caption(labels: dict[str, Any], rng: np.random.Generator) -> str:
    """A training caption of a clip: one of :data:`TRAIN_FORMS` filled with synonyms, all drawn from ``rng``."""
    st = STYLE_BY_NAME[labels["style"]]
    mood = _pick(rng, MOOD_WORDS[labels["mood"]])
    instr = _instrument_list(rng, labels["instruments"])
    lead = _pick(rng, INSTRUMENT_WORDS.get(labels["instruments"][0], (labels["instruments"][0],)))
    f = dict(name=_pick(rng, NAMES[st.name]), mood=mood, noun=_pick(rng, st.nouns + COMMON_NOUNS),
             instruments=_join(instr), lead=lead, trait=_pick(rng, TRAITS[st.name]),
             everyday=_pick(rng, EVERYDAY[st.name]).format(mood=mood),
             tempo_word=_pick(rng, TEMPO_WORDS[_tempo_word(labels["tempo"])]),
             bpm=labels["tempo"], key=KEY_WORDS.get(labels["key"], labels["key"]), mode=labels["mode"])
    # the original templates' field names
    f.update(title=f["name"], extra=f["trait"], tempo=f["bpm"], Key=f["key"], Title=_cap(f["name"]),
             Instruments=_cap(f["instruments"]), Tempo_word=_cap(f["tempo_word"]))
    f.update(Name=_cap(f["name"]), Everyday=_cap(f["everyday"]), Lead=_cap(lead), Art="\x01A", art="\x01a")
    text = _articles(_pick(rng, TRAIN_FORMS).format(**f))
    return " ".join(text.replace(" ,", ",").replace(" .", ".").split())
