"""Caption vocabulary: the many ways people name a style, its moods and its instruments
(the tables live in assets/vocab.json; this module loads them).

Training captions draw their words from these tables (:func:`presto_cli.data.synth.captions.train_caption`).
Rules the tests hold them to (tests/test_synth.py):

* within one style, the synonym groups of its four moods share no word, and no other word of that
  style's vocabulary (names, traits, everyday phrases, nouns, instruments) is a mood word of that style, so a
  held-out mood never reaches a training caption through another field;
* traits and everyday phrases name only instruments every clip of the style has;
* no training wording uses the held-out templates' phrases ("Music for a", "built around").

The paraphrase evaluation set (assets/paraphrase_prompts.jsonl) is written in words these tables
do not combine: keep it that way when adding words here (the tests check it).
"""
from __future__ import annotations

import json
from pathlib import Path


def _tuples(value):
    """JSON lists back to the tuples the caption code and the tests expect."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return tuple(value) if isinstance(value, list) else value


_TABLES = _tuples(json.loads((Path(__file__).resolve().parents[2] / "assets" / "vocab.json")
                             .read_text(encoding="utf-8")))

# mood label -> words that say it (the label first). Shared across styles: a style only uses the
# groups of its own moods.
MOOD_WORDS: dict[str, tuple[str, ...]] = _TABLES["MOOD_WORDS"]
# GM caption name (styles.GM, kit names; drum kits last) -> other words for it (the name first).
INSTRUMENT_WORDS: dict[str, tuple[str, ...]] = _TABLES["INSTRUMENT_WORDS"]
# tempo label -> words that say it
TEMPO_WORDS: dict[str, tuple[str, ...]] = _TABLES["TEMPO_WORDS"]
# style name -> names, traits and everyday phrases ({mood} is filled with a mood word of the clip).
NAMES: dict[str, tuple[str, ...]] = _TABLES["NAMES"]
TRAITS: dict[str, tuple[str, ...]] = _TABLES["TRAITS"]
EVERYDAY: dict[str, tuple[str, ...]] = _TABLES["EVERYDAY"]
# extra nouns every style may use (after its own Style.nouns)
COMMON_NOUNS: tuple[str, ...] = _TABLES["COMMON_NOUNS"]
