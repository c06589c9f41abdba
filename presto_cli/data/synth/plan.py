"""Planning: a clip's attributes, caption and composition seed from ``(seed, index)`` only."""
from __future__ import annotations

from typing import Any

import numpy as np

from presto_cli.data.synth.captions import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, make_caption, train_caption
from presto_cli.data.synth.styles import GM, KEY_NAMES, STYLES


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]))


def heldout_moods(seed: int) -> dict[str, str]:
    """One mood per style that only held-out clips use (so their prompts are never trained on)."""
    r = _rng(seed, 0x4E1D)
    return {s.name: s.moods[int(r.integers(len(s.moods)))] for s in STYLES}


def plan_clip(seed: int, index: int, heldout: bool = False, use_heldout: bool = False) -> dict[str, Any]:
    """Structured attributes, caption and the per-clip composition seed of clip ``index``."""
    st = STYLES[index % len(STYLES)]
    r = _rng(seed, index, 0xC11B)
    reserved = heldout_moods(seed)[st.name] if use_heldout else None
    if heldout:
        mood = reserved
    else:
        moods = [m for m in st.moods if m != reserved]
        mood = moods[int(r.integers(len(moods)))]
    mood_i = st.moods.index(mood)
    lo, hi = st.tempo  # the first two moods lean to the lower half, the last two to the upper
    frac = (r.random() * 0.6 + (0.4 if mood_i >= len(st.moods) // 2 else 0.0))
    tempo = int(round(lo + frac * (hi - lo)))
    key = KEY_NAMES[int(r.integers(12))]
    mode = st.modes[int(r.integers(len(st.modes)))]
    programs = {p.role: int(p.programs[int(r.integers(len(p.programs)))]) for p in st.parts}
    kit = st.kits[int(r.integers(len(st.kits)))] if st.drums else None
    instruments = []
    for p in st.parts:
        name = GM[programs[p.role]]
        if name not in instruments:
            instruments.append(name)
    if kit is not None:
        instruments.append(kit[1])
    prog = int(r.integers(len(st.progressions)))
    noun = st.nouns[int(r.integers(len(st.nouns)))]
    templates = HELDOUT_TEMPLATES if heldout else TRAIN_TEMPLATES
    template = int(r.integers(len(templates)))  # drawn in training too: keeps the composition seed below
    labels = {"style": st.name, "tempo": tempo, "key": key, "mode": mode,
              "instruments": instruments, "mood": mood}
    if heldout:
        caption = make_caption({**labels, "noun": noun}, templates[template])
    else:  # its own stream, so the wording never moves the music
        caption = train_caption(labels, _rng(seed, index, 0xCA97))
    return {"index": index, "seed": int(r.integers(2**31 - 1)), "labels": labels, "caption": caption,
            "programs": programs, "kit": kit[0] if kit else None, "progression": prog,
            "split": "heldout" if heldout else "train"}


def heldout_indices(seed: int, n: int, fraction: float) -> set[int]:
    if fraction <= 0:
        return set()
    k = int(round(fraction * n))
    return set(int(i) for i in _rng(seed, 0xF01D).permutation(n)[:k])

