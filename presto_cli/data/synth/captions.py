"""Captions: a clip's structured labels -> the text it is trained (or evaluated) with."""
from __future__ import annotations

from typing import Any

from presto_cli.data.synth.styles import KEY_WORDS, STYLE_BY_NAME

# Caption templates. The last two are reserved for the held-out split, never used in training.
TRAIN_TEMPLATES = (
    "{Art} {mood} {title} {noun} with {instruments}, in {key} {mode}, {tempo} BPM.",
    "{Title} in {key} {mode} at {tempo} BPM: {instruments}. The mood is {mood}.",
    "{Tempo_word} {title} {noun} featuring {instruments}; {mood} feel, {key} {mode}, {tempo} BPM.",
    "{Instruments} play a {mood} {title} {noun} {extra}, {key} {mode}, {tempo} bpm.",
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
    """Fill a caption template from a clip's structured labels."""
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

