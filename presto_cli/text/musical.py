"""Tempo and key as numbers: parsed from prompts and captions, read from dataset labels.

A tempo is a BPM (float, 20-400); a key is an index ``tonic + 12 * minor`` in 0..23 (tonic 0 = C,
1 = C#/Db, ..., 11 = B; major 0-11, minor 12-23), named like ``"E minor"`` / ``"Bb major"``.
``NO_KEY = -1`` and ``NaN`` are the "absent" values the DiT's tempo/key conditions take
(:class:`presto_cli.diffusion.edm.Cond`).

Prompts are parsed conservatively: a BPM needs a unit or the word tempo next to it (``"at 104 BPM"``,
``"104bpm"``, ``"tempo 104"``, ``"104 beats per minute"``; never ``"4 beats"``), a key needs an
upper-case tonic letter and the word major or minor (``"in E minor"``, ``"F# major"``, ``"Bb minor"``,
``"A-flat major"``, ``"D flat major"``; never ``"minor changes"``, and ``"A minor change"`` reads the
``A`` as an article unless ``in``/``of``/``key`` comes before it).
"""
from __future__ import annotations

import math
import re
from typing import Any

from presto_cli.errors import PrestoError

BPM_MIN, BPM_MAX = 20.0, 400.0
NO_KEY = -1
N_KEYS = 24
TONICS = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_LETTER = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_SHARP = ("#", "♯", "sharp", "-sharp", " sharp", "is")
_FLAT = ("b", "♭", "flat", "-flat", " flat", "es")

__all__ = ["BPM_MIN", "BPM_MAX", "NO_KEY", "N_KEYS", "key_index", "key_name", "parse_bpm",
           "parse_key", "parse_prompt", "check_bpm", "check_key", "row_tempo_key"]


def key_index(tonic: int, minor: bool) -> int:
    return int(tonic) % 12 + (12 if minor else 0)


def key_name(index: int | None) -> str | None:
    """``"E minor"`` for 16; None for an absent key (None or negative)."""
    if index is None or int(index) < 0:
        return None
    i = int(index)
    if i >= N_KEYS:
        raise ValueError(f"key index {i} outside 0..{N_KEYS - 1}")
    return f"{TONICS[i % 12]} {'minor' if i >= 12 else 'major'}"


def _tonic(letter: str, accidental: str) -> int:
    t = _LETTER[letter.upper()]
    acc = accidental.strip().lower().lstrip("-").strip()
    if acc in ("#", "♯", "sharp"):
        t += 1
    elif acc in ("b", "♭", "flat"):
        t -= 1
    return t % 12


# -- prompts -------------------------------------------------------------------------------------

_NUM = r"(?<![\d.])(\d{2,3}(?:\.\d+)?)"
_BPM_PATTERNS = (
    # a range "70-80 BPM" / "between 70 and 80 bpm": its middle
    re.compile(_NUM + r"\s*(?:-|–|to|and)\s*" + _NUM + r"\s*(?:bpm\b|beats\s+per\s+minute\b)", re.I),
    re.compile(_NUM + r"\s*(?:bpm\b|beats\s+per\s+minute\b|beats/min\b)", re.I),
    re.compile(r"\b(?:bpm|tempo)\s*(?:of|is|=|:|at|around|about|~)?\s*(?:around|about|~)?\s*" + _NUM + r"\b", re.I),
)
_ACC = r"(#|♯|b|♭|-?\s?sharp|-?\s?flat)?"
_KEY_RE = re.compile(r"(?<![A-Za-z0-9])([A-G])" + _ACC + r"[\s-]*(major|minor|maj|min)\b", re.I)


def parse_bpm(text: str) -> float | None:
    """The BPM written in ``text`` (None when there is none, or it lies outside 20-400)."""
    for k, pat in enumerate(_BPM_PATTERNS):
        m = pat.search(text)
        if m is None:
            continue
        vals = [float(g) for g in m.groups() if g is not None]
        bpm = sum(vals) / len(vals) if k == 0 else vals[0]
        return bpm if BPM_MIN <= bpm <= BPM_MAX else None
    return None


def parse_key(text: str) -> int | None:
    """The key written in ``text`` as an index 0..23 (None when there is none)."""
    for m in _KEY_RE.finditer(text):
        letter, acc, mode = m.group(1), m.group(2) or "", m.group(3).lower()
        if mode in ("maj", "min") and not re.match(r"[\s.,;:)!?]|$", text[m.end():m.end() + 1]):
            continue
        if not letter.isupper():
            # lower case: only "in/of/key a minor", and never a bare "b" read as a flat sign
            before = text[:m.start()].rstrip().lower()
            if not re.search(r"\b(in|of|key)$", before):
                continue
        elif letter == "A" and not acc:
            # "A minor change": the article, unless "in/of/key A minor" or nothing word-like follows
            before = text[:m.start()].rstrip().lower()
            after = text[m.end():].lstrip()
            follows_word = bool(re.match(r"[a-z]", after)) and not re.match(
                r"(key|scale|tonality|at|with|and|in|,)\b", after, re.I)
            if follows_word and not re.search(r"\b(in|of|key)$", before):
                continue
        return key_index(_tonic(letter, acc), mode.startswith("min"))
    return None


def parse_prompt(text: str) -> tuple[float | None, int | None]:
    """``(bpm, key index)`` written in a prompt or caption, each None when absent."""
    return parse_bpm(text), parse_key(text)


# -- user values (--bpm / --key) ------------------------------------------------------------------

def check_bpm(bpm: float | None) -> float | None:
    if bpm is None:
        return None
    if not (math.isfinite(bpm) and BPM_MIN <= bpm <= BPM_MAX):
        raise PrestoError(f"--bpm {bpm:g} is outside {BPM_MIN:g}-{BPM_MAX:g}",
                          "give a tempo in beats per minute, e.g. --bpm 104")
    return float(bpm)


_FLAG_RE = re.compile(r"^\s*([A-Ga-g])\s*(#|♯|b|♭|(?i:-?\s?sharp|-?\s?flat))?[\s-]*((?i:major|minor|maj|min)|m|M)?\s*$")


def check_key(name: str | None) -> int | None:
    """A key name as the user writes it (``"E minor"``, ``"F# major"``, ``"Bb minor"``, ``"A-flat
    major"``, ``"Em"``, ``"C"`` = C major) -> index; a clear error for anything else."""
    if name is None:
        return None
    m = _FLAG_RE.match(name)
    if m is None:
        raise PrestoError(f"unknown key '{name}'",
                          "give a tonic and a mode, e.g. --key \"E minor\", \"F# major\" or \"Bb minor\"")
    letter, acc, mode = m.group(1), m.group(2) or "", m.group(3) or "major"
    minor = mode == "m" or mode.lower() in ("minor", "min")
    return key_index(_tonic(letter, acc), minor)


# -- dataset rows -------------------------------------------------------------------------------

def _bpm_value(v: Any) -> float | None:
    try:
        bpm = float(v)
    except (TypeError, ValueError):
        return parse_bpm(str(v)) if isinstance(v, str) else None
    return bpm if math.isfinite(bpm) and BPM_MIN <= bpm <= BPM_MAX else None


def _key_value(key: Any, mode: Any) -> int | None:
    if key in (None, ""):
        return None
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        k = int(key)
        return k if 0 <= k < N_KEYS else None
    text = str(key).strip()
    if mode not in (None, "") and not re.search(r"(maj|min)", text, re.I):
        text = f"{text} {mode}"
    try:
        return check_key(text)
    except PrestoError:
        return None


def row_tempo_key(row: dict[str, Any]) -> tuple[float | None, int | None]:
    """A manifest row's tempo and key, each None when unknown: from its labels (the synthetic
    corpus: ``labels: {tempo, key, mode}``), from fields or CSV columns ``bpm``/``tempo`` and
    ``key`` (+ ``mode``) at the top level, else parsed from its caption."""
    low = {str(k).strip().lower(): v for k, v in row.items()}
    labels = low.get("labels") if isinstance(low.get("labels"), dict) else {}
    sources = [{str(k).lower(): v for k, v in labels.items()}, low]
    bpm = key = None
    for src in sources:
        for name in ("bpm", "tempo"):
            if bpm is None and src.get(name) not in (None, ""):
                bpm = _bpm_value(src[name])
        if key is None:
            key = _key_value(src.get("key"), src.get("mode"))
    if bpm is None or key is None:
        cap_bpm, cap_key = parse_prompt(str(row.get("caption", "")))
        bpm = cap_bpm if bpm is None else bpm
        key = cap_key if key is None else key
    return bpm, key
