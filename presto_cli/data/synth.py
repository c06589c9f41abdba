"""A synthetic text-to-music corpus: procedural MIDI -> FluidSynth -> pedalboard -> wav + captions.

Every clip is a short piece in one of :data:`STYLES` (jazz trio, rock, classical piano, ...). The
attributes (style, tempo, key, mode, instruments, mood) are drawn from ``(seed, index)`` only, so a
clip's bytes do not depend on the number of clips or workers. Styles differ in what a small model
can hear: rhythm (swing, four-on-the-floor, one-drop, breakbeat), instruments (General MIDI
programs and drum kits), drums or none, register, note density and the effects chain.

Output layout (``presto data synth --out DIR``)::

    DIR/audio/000000_jazz_trio.wav   mono PCM-16 at the requested rate, exact length
    DIR/manifest.jsonl               {"path", "caption", "labels", "duration", "seed", "split"}
    DIR/styles.json                  {"styles": [{"name", "title", "caption"}]}  (zero-shot labels)
    DIR/synth.json                   the settings that made the corpus (provenance)

This is [ours]: the paper trains on licensed music that was never released (METHOD.md, section 0),
so presto ships a corpus anyone can rebuild.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from presto_cli.errors import PrestoError

# ----------------------------------------------------------------------------------------------
# Musical vocabulary
# ----------------------------------------------------------------------------------------------
KEY_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
KEY_WORDS = {"Db": "D flat", "Eb": "E flat", "F#": "F sharp", "Ab": "A flat", "Bb": "B flat"}
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}

# General MIDI programs (0-based) used below and their caption names.
GM = {
    0: "piano", 4: "Rhodes electric piano", 5: "electric piano", 7: "clavinet", 8: "celesta",
    11: "vibraphone", 12: "marimba", 16: "organ", 18: "rock organ", 22: "harmonica",
    24: "nylon-string guitar", 25: "acoustic guitar", 26: "jazz guitar", 27: "clean electric guitar", 28: "muted guitar",
    29: "overdriven guitar", 30: "distorted guitar", 32: "upright bass", 33: "electric bass",
    34: "picked bass", 35: "fretless bass", 36: "slap bass", 38: "synth bass", 39: "acid synth bass",
    40: "violin", 41: "viola", 42: "cello", 45: "pizzicato strings", 46: "harp", 47: "timpani",
    48: "string ensemble", 49: "slow strings", 52: "choir", 56: "trumpet", 57: "trombone",
    60: "french horn", 61: "brass section", 62: "synth brass", 65: "alto sax", 66: "tenor sax",
    71: "clarinet", 73: "flute", 80: "square-wave lead", 81: "sawtooth lead", 87: "bass lead",
    88: "new age pad", 89: "warm pad", 90: "polysynth", 91: "choir pad", 94: "halo pad",
    95: "sweep pad",
}
# GM percussion keys
KICK, SIDE, SNARE, CLAP, SNARE2, HH_C, HH_P, HH_O = 36, 37, 38, 39, 40, 42, 44, 46
CRASH, RIDE, RIDE_BELL, TAMB, COWBELL, SHAKER, CLAVES, TOM_L, TOM_H = 49, 51, 53, 54, 56, 70, 75, 45, 50


@dataclass(frozen=True)
class Part:
    """One instrument role: candidate GM programs, the generator that writes its notes, register."""

    role: str
    programs: tuple[int, ...]
    gen: str
    low: int
    high: int
    vel: int = 80


@dataclass(frozen=True)
class Style:
    name: str
    title: str                       # words used in captions ("jazz trio")
    nouns: tuple[str, ...]           # "track", "tune", ...
    canonical: str                   # canonical caption for zero-shot classification
    tempo: tuple[int, int]
    modes: tuple[str, ...]
    moods: tuple[str, ...]
    parts: tuple[Part, ...]
    progressions: tuple[tuple[int, ...], ...]
    drums: str | None = None         # drum generator name
    kits: tuple[tuple[int, str], ...] = ()  # (GM drum-kit program, caption name)
    chord_size: int = 3
    bars_per_chord: int = 1
    swing: tuple[str, float] = ("none", 0.5)  # ("8th" | "16th" | "none", long-note fraction)
    humanize: float = 0.008          # seconds of timing jitter (std)
    fx: str = "default"
    extra: str = ""                  # descriptive words for captions ("with swinging ride cymbal")


STYLES: tuple[Style, ...] = (
    Style("jazz_trio", "jazz trio", ("piece", "tune", "number"),
          "A jazz trio with swinging ride cymbal, walking upright bass and piano.",
          (110, 180), ("major",), ("relaxed", "sophisticated", "smoky", "lively"),
          (Part("bass", (32,), "walking", 28, 50, 85), Part("comp", (0, 0, 11, 26), "jazz_comp", 50, 74, 62),
           Part("lead", (0, 66, 56), "melody_swing", 62, 86, 78)),
          ((1, 4, 0, 0), (0, 5, 1, 4), (2, 5, 1, 4)), drums="jazz", kits=((32, "brushed jazz drums"), (0, "jazz drums")),
          chord_size=4, swing=("8th", 0.66), extra="with swinging ride cymbal and walking bass", fx="jazz"),
    Style("rock", "rock", ("song", "track", "anthem"),
          "A rock band with distorted electric guitars, bass and loud drums.",
          (105, 150), ("major", "minor"), ("energetic", "driving", "rebellious", "triumphant"),
          (Part("bass", (34, 33), "root8", 28, 48, 95), Part("guitar", (30, 29), "power8", 40, 64, 90),
           Part("lead", (29, 30, 18), "melody", 62, 86, 88)),
          ((0, 4, 5, 3), (0, 3, 4, 3), (0, 6, 3, 0)), drums="rock", kits=((16, "rock drums"), (0, "drum kit")),
          fx="rock", extra="with power chords and a steady backbeat"),
    Style("classical_piano", "classical piano", ("piece", "sonatina", "etude"),
          "A solo classical piano piece with Alberti bass and a singing melody.",
          (70, 112), ("major", "minor"), ("gentle", "melancholic", "romantic", "graceful"),
          (Part("left hand", (0,), "alberti", 36, 60, 60), Part("right hand", (0,), "melody", 64, 88, 78)),
          ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 2)), humanize=0.012, fx="hall",
          extra="solo, no drums"),
    Style("string_quartet", "string quartet", ("piece", "movement", "chamber piece"),
          "A string quartet of violins, viola and cello playing sustained harmony.",
          (60, 100), ("major", "minor"), ("elegant", "sorrowful", "tender", "stately"),
          (Part("cello", (42,), "sustain_bass", 36, 55, 72), Part("viola", (41,), "sustain_mid", 52, 67, 62),
           Part("second violin", (40,), "sustain_high", 62, 76, 60), Part("first violin", (40,), "melody_slow", 69, 91, 82)),
          ((0, 5, 3, 4), (0, 3, 0, 4), (0, 4, 5, 3)), humanize=0.012, fx="hall", extra="bowed, no drums"),
    Style("techno", "techno", ("track", "loop", "cut"),
          "A dark techno track with a four-on-the-floor kick, hi-hats and a pulsing synth bass.",
          (124, 140), ("minor",), ("dark", "hypnotic", "relentless", "brooding"),
          (Part("bass", (38, 39), "techno_bass", 30, 50, 100), Part("stab", (81, 90), "techno_stab", 55, 75, 70)),
          ((0,), (0, 0, 5, 5), (0, 6)), drums="techno", kits=((25, "drum machine"), (24, "electronic drums")),
          humanize=0.0, fx="club", extra="with a four-on-the-floor kick"),
    Style("house", "house", ("track", "groove", "tune"),
          "An uplifting house track with four-on-the-floor kick, offbeat hats and piano chord stabs.",
          (118, 128), ("major", "minor"), ("uplifting", "euphoric", "sunny", "soulful"),
          (Part("bass", (38, 33), "house_bass", 33, 52, 92), Part("keys", (0, 4, 90), "house_stab", 55, 77, 80),
           Part("pad", (89, 48), "sustain_mid", 60, 76, 45)),
          ((0, 5, 3, 4), (1, 4, 0, 0), (5, 3, 0, 4)), drums="house", kits=((25, "drum machine"), (24, "electronic drums")),
          chord_size=4, humanize=0.0, fx="club", extra="with offbeat open hi-hats"),
    Style("ambient", "ambient", ("soundscape", "piece", "drone"),
          "A calm ambient soundscape of slowly evolving synth pads with no drums.",
          (60, 80), ("major", "minor"), ("calm", "dreamy", "meditative", "ethereal"),
          (Part("pad", (89, 94, 88, 91), "pad", 48, 72, 60), Part("bass pad", (95, 48), "sustain_bass", 36, 52, 45),
           Part("bells", (8, 11, 46), "sparse_bells", 72, 96, 50)),
          ((0, 3), (0, 5, 3, 4), (0, 4)), bars_per_chord=2, chord_size=4, humanize=0.02, fx="ambient",
          extra="slowly evolving, beatless"),
    Style("funk", "funk", ("groove", "jam", "track"),
          "A tight funk groove with slap bass, clavinet and brass stabs over syncopated drums.",
          (95, 115), ("minor",), ("groovy", "funky", "playful", "sassy"),
          (Part("bass", (36, 33), "funk_bass", 28, 52, 100), Part("clav", (7, 27), "clav16", 55, 74, 70),
           Part("horns", (61, 56), "brass_stab", 60, 80, 90)),
          ((0, 0, 3, 3), (0, 3, 0, 3), (0, 0, 0, 6)), drums="funk", kits=((0, "funk drums"), (16, "tight drums")),
          chord_size=4, swing=("16th", 0.56), fx="dry", extra="with syncopated sixteenth notes"),
    Style("bossa_nova", "bossa nova", ("tune", "song", "piece"),
          "A gentle bossa nova with nylon-string guitar, soft percussion and flute.",
          (118, 145), ("major", "minor"), ("breezy", "romantic", "relaxed", "wistful"),
          (Part("bass", (32, 33), "bossa_bass", 33, 50, 75), Part("guitar", (24,), "bossa_guitar", 50, 70, 62),
           Part("lead", (73, 65, 71), "melody_slow", 65, 88, 72)),
          ((1, 4, 0, 0), (0, 1, 4, 0), (0, 3, 1, 4)), drums="bossa", kits=((40, "soft brushed percussion"), (0, "light percussion")),
          chord_size=4, humanize=0.01, fx="warm", extra="with a syncopated clave rhythm"),
    Style("reggae", "reggae", ("tune", "riddim", "song"),
          "A laid-back reggae riddim with one-drop drums, offbeat guitar skank, organ and deep bass.",
          (68, 90), ("major", "minor"), ("laid-back", "sunny", "mellow", "uplifting"),
          (Part("bass", (33, 35), "reggae_bass", 28, 47, 100), Part("skank", (27, 28), "skank", 58, 74, 72),
           Part("organ", (16,), "bubble", 52, 70, 50)),
          ((0, 3, 0, 4), (0, 4, 3, 3), (0, 5, 3, 4)), drums="reggae", kits=((0, "one-drop drums"), (8, "roots drums")),
          swing=("8th", 0.58), fx="dub", extra="with offbeat guitar chops"),
    Style("lofi_hiphop", "lo-fi hip hop", ("beat", "loop", "track"),
          "A chill lo-fi hip hop beat with dusty drums, mellow Rhodes chords and vinyl crackle.",
          (70, 90), ("major", "minor"), ("chill", "nostalgic", "sleepy", "cozy"),
          (Part("bass", (33, 32), "lofi_bass", 31, 50, 85), Part("keys", (4, 5, 0), "rhodes", 52, 76, 60),
           Part("lead", (11, 26, 73), "melody_sparse", 64, 84, 62)),
          ((1, 4, 0, 5), (3, 2, 1, 0), (0, 5, 1, 4)), drums="lofi", kits=((8, "dusty drums"), (0, "boom-bap drums")),
          chord_size=4, swing=("16th", 0.6), humanize=0.012, fx="lofi", extra="with vinyl crackle"),
    Style("chiptune", "chiptune", ("tune", "theme", "track"),
          "A bright 8-bit chiptune with square-wave lead, fast arpeggios and a bitcrushed beat.",
          (130, 175), ("major", "minor"), ("playful", "heroic", "bouncy", "adventurous"),
          (Part("bass", (80, 81), "chip_bass", 33, 52, 80), Part("arp", (80,), "arp", 60, 84, 55),
           Part("lead", (80, 81), "melody_fast", 72, 96, 80)),
          ((0, 5, 3, 4), (0, 3, 4, 4), (0, 4, 5, 3)), drums="chip", kits=((25, "8-bit drums"),),
          humanize=0.0, fx="chip", extra="like a retro video game"),
    Style("cinematic", "cinematic orchestral", ("score", "cue", "piece"),
          "An epic cinematic orchestral score with strings, brass, choir and timpani.",
          (70, 100), ("minor",), ("epic", "tense", "heroic", "ominous"),
          (Part("strings", (48, 49), "ostinato", 48, 67, 80), Part("low brass", (57, 60), "sustain_bass", 36, 55, 75),
           Part("horns", (60, 61), "melody_slow", 58, 79, 90), Part("choir", (52,), "sustain_high", 60, 76, 55),
           Part("timpani", (47,), "timpani", 36, 50, 100)),
          ((0, 5, 2, 6), (0, 3, 5, 4), (0, 6, 5, 6)), drums="cinematic", kits=((48, "orchestral percussion"),),
          humanize=0.006, fx="hall", extra="with a driving string ostinato"),
    Style("drum_and_bass", "drum and bass", ("track", "roller", "tune"),
          "A fast drum and bass track with chopped breakbeats, a deep rolling bass and atmospheric pads.",
          (165, 178), ("minor",), ("intense", "dark", "rolling", "futuristic"),
          (Part("bass", (38, 87), "dnb_bass", 26, 45, 100), Part("pad", (89, 95), "pad", 55, 76, 45)),
          ((0, 0, 5, 6), (0, 5, 0, 6), (0, 3, 5, 4)), drums="dnb", kits=((24, "breakbeat drums"), (0, "breakbeat drums")),
          chord_size=4, bars_per_chord=2, humanize=0.0, fx="club", extra="with a chopped breakbeat"),
)
STYLE_BY_NAME = {s.name: s for s in STYLES}

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


def style_captions() -> dict[str, str]:
    """Style name -> canonical caption (what ``styles.json`` holds)."""
    return {s.name: s.canonical for s in STYLES}


# ----------------------------------------------------------------------------------------------
# Planning: attributes from (seed, index) only
# ----------------------------------------------------------------------------------------------
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
    template = int(r.integers(len(templates)))
    labels = {"style": st.name, "tempo": tempo, "key": key, "mode": mode,
              "instruments": instruments, "mood": mood}
    caption = make_caption({**labels, "noun": noun}, templates[template])
    return {"index": index, "seed": int(r.integers(2**31 - 1)), "labels": labels, "caption": caption,
            "programs": programs, "kit": kit[0] if kit else None, "progression": prog,
            "split": "heldout" if heldout else "train"}


def heldout_indices(seed: int, n: int, fraction: float) -> set[int]:
    if fraction <= 0:
        return set()
    k = int(round(fraction * n))
    return set(int(i) for i in _rng(seed, 0xF01D).permutation(n)[:k])


# ----------------------------------------------------------------------------------------------
# Composition
# ----------------------------------------------------------------------------------------------
class Composer:
    """Writes one clip's notes into a PrettyMIDI object on a 16-steps-per-bar grid."""

    def __init__(self, plan: dict[str, Any], seconds: float):
        import pretty_midi

        self.pm_mod = pretty_midi
        self.plan = plan
        self.st = STYLE_BY_NAME[plan["labels"]["style"]]
        lab = plan["labels"]
        self.rng = _rng(plan["seed"], 0xC0DE)
        self.tempo = float(lab["tempo"])
        self.step = 60.0 / self.tempo / 4.0
        self.seconds = float(seconds)
        self.bars = int(math.ceil((seconds + 0.5) / (16 * self.step)))
        self.root = KEY_NAMES.index(lab["key"])
        self.scale = SCALES[lab["mode"]]
        self.prog = self.st.progressions[plan["progression"]]
        mood_i = self.st.moods.index(lab["mood"])
        self.vel_scale = 0.85 + 0.1 * mood_i / max(1, len(self.st.moods) - 1) * 2
        self.pm = pretty_midi.PrettyMIDI(initial_tempo=self.tempo)

    # --- time and harmony -------------------------------------------------------------------
    def t(self, bar: int, step: float, jitter: bool = True) -> float:
        kind, r = self.st.swing
        beat, f = divmod(step, 4.0)
        if kind == "8th":  # 0 -> 0, 2 -> 4r, 4 -> 4 (piecewise linear)
            f = f * 2 * r if f <= 2 else 4 * r + (f - 2) * 2 * (1 - r)
        elif kind == "16th":
            e, g = divmod(f, 2.0)
            f = 2 * e + (g * 2 * r if g <= 1 else 2 * r + (g - 1) * 2 * (1 - r))
        sec = (bar * 16 + beat * 4 + f) * self.step
        if jitter and self.st.humanize > 0:
            sec += float(self.rng.normal(0.0, self.st.humanize))
        return max(0.0, sec)

    def degree(self, bar: int) -> int:
        return self.prog[(bar // self.st.bars_per_chord) % len(self.prog)]

    def chord(self, bar: int, size: int | None = None) -> list[int]:
        """Semitone offsets from the key root of the chord on ``bar`` (stacked scale thirds)."""
        d = self.degree(bar)
        out = []
        for k in range(size or self.st.chord_size):
            i = d + 2 * k
            out.append(self.root + self.scale[i % 7] + 12 * (i // 7))
        return out

    def scale_pitches(self, low: int, high: int) -> list[int]:
        pcs = {(self.root + s) % 12 for s in self.scale}
        return [p for p in range(low, high + 1) if p % 12 in pcs]

    @staticmethod
    def place(pc: int, low: int, high: int) -> int:
        """The lowest pitch with pitch class ``pc`` at or above ``low`` (folded under ``high``)."""
        p = low + ((pc - low) % 12)
        while p > high:
            p -= 12
        return p

    def voicing(self, bar: int, low: int, high: int, size: int | None = None) -> list[int]:
        ch = self.chord(bar, size)
        base = self.place(ch[0] % 12, low, high)
        notes = [base + (c - ch[0]) for c in ch]
        return [n - 12 if n > high + 4 else n for n in notes]

    # --- note writing -----------------------------------------------------------------------
    def inst(self, program: int, is_drum: bool = False, name: str = ""):
        ins = self.pm_mod.Instrument(program=program, is_drum=is_drum, name=name)
        self.pm.instruments.append(ins)
        return ins

    def note(self, ins, pitch: int, bar: int, step: float, dur: float, vel: float) -> None:
        start = self.t(bar, step)
        end = max(start + 0.03, self.t(bar, step + dur, jitter=False) - 0.01)
        v = int(np.clip(vel * self.vel_scale + self.rng.normal(0, 4 if self.st.humanize else 0), 1, 127))
        ins.notes.append(self.pm_mod.Note(velocity=v, pitch=int(np.clip(pitch, 0, 127)),
                                          start=float(start), end=float(end)))

    def compose(self):
        for part in self.st.parts:
            ins = self.inst(self.plan["programs"][part.role], name=part.role)
            gen: Callable = getattr(self, "g_" + part.gen)
            for bar in range(self.bars):
                gen(ins, part, bar)
        if self.st.drums:
            ins = self.inst(self.plan["kit"] or 0, is_drum=True, name="drums")
            gen = getattr(self, "d_" + self.st.drums)
            for bar in range(self.bars):
                gen(ins, bar)
        stop = self.seconds + 0.25  # nothing after the cut is heard: keep the render short
        for ins in self.pm.instruments:
            ins.notes = [nt for nt in ins.notes if nt.start < stop]
            for nt in ins.notes:
                nt.end = min(nt.end, stop)
        return self.pm

    # --- bass lines ---------------------------------------------------------------------------
    def _root(self, bar: int, p: Part) -> int:
        return self.place(self.chord(bar)[0] % 12, p.low, p.low + 11)

    def g_walking(self, ins, p: Part, bar: int) -> None:
        root, nxt = self._root(bar, p), self._root(bar + 1, p)
        ch = self.chord(bar)
        tones = [root, root + (ch[1] - ch[0]), root + (ch[2] - ch[0])]
        line = [root, tones[int(self.rng.integers(1, 3))], tones[int(self.rng.integers(0, 3))]]
        line.append(nxt + (1 if self.rng.random() < 0.5 else -1))  # chromatic approach
        for i, n in enumerate(line):
            self.note(ins, n, bar, 4 * i, 3.6, p.vel - (0 if i == 0 else 8))

    def g_root8(self, ins, p: Part, bar: int) -> None:
        root = self._root(bar, p)
        for s in range(0, 16, 2):
            self.note(ins, root + (12 if s == 14 and self.rng.random() < 0.3 else 0), bar, s, 1.7,
                      p.vel - (0 if s % 4 == 0 else 10))

    def g_sustain_bass(self, ins, p: Part, bar: int) -> None:
        if bar % self.st.bars_per_chord == 0:
            self.note(ins, self._root(bar, p), bar, 0, 16 * self.st.bars_per_chord - 0.5, p.vel)

    def g_techno_bass(self, ins, p: Part, bar: int) -> None:
        root = self._root(bar, p)
        for s in range(16):
            if s % 4 == 0:
                continue  # the kick owns the downbeats
            if s % 4 == 2 or self.rng.random() < 0.35:
                self.note(ins, root + (12 if self.rng.random() < 0.15 else 0), bar, s, 0.8,
                          p.vel - (0 if s % 4 == 2 else 20))

    def g_house_bass(self, ins, p: Part, bar: int) -> None:
        root = self._root(bar, p)
        for s in (2, 6, 10, 14):
            self.note(ins, root + (12 if s == 14 and self.rng.random() < 0.5 else 0), bar, s, 1.5, p.vel)
        if self.rng.random() < 0.5:
            self.note(ins, root + 7, bar, 7, 0.8, p.vel - 15)

    def g_funk_bass(self, ins, p: Part, bar: int) -> None:
        root = self._root(bar, p)
        self.note(ins, root, bar, 0, 1.5, p.vel + 10)
        for s in range(2, 16):
            if self.rng.random() < 0.38:
                n = root + int(self.rng.choice([0, 12, 10, 7, 12, 3]))
                self.note(ins, n, bar, s, 0.6, p.vel - (25 if self.rng.random() < 0.3 else 0))

    def g_bossa_bass(self, ins, p: Part, bar: int) -> None:
        root = self._root(bar, p)
        fifth = root + 7 if root + 7 <= p.high else root - 5
        for s, n in ((0, root), (6, fifth), (8, fifth), (14, root)):
            self.note(ins, n, bar, s, 1.8 if s in (0, 8) else 1.5, p.vel)

    def g_reggae_bass(self, ins, p: Part, bar: int) -> None:
        root = self._root(bar, p)
        ch = self.chord(bar)
        third = root + ch[1] - ch[0]
        for s, n, d in ((2, root, 1.8), (4, root, 1.0), (6, third, 1.0), (8, root + 7, 2.8),
                        (12, third, 1.0), (14, root, 1.5)):
            if s == 2 or self.rng.random() < 0.8:
                self.note(ins, n, bar, s, d, p.vel)

    def g_lofi_bass(self, ins, p: Part, bar: int) -> None:
        root = self._root(bar, p)
        self.note(ins, root, bar, 0, 5.5, p.vel)
        self.note(ins, root, bar, 6, 1.5, p.vel - 10)
        if self.rng.random() < 0.6:
            self.note(ins, root + (10 if self.scale[2] == 3 else 11), bar, 10, 2.5, p.vel - 12)

    def g_dnb_bass(self, ins, p: Part, bar: int) -> None:
        root = self._root(bar, p)
        self.note(ins, root, bar, 0, 5.5, p.vel)
        self.note(ins, root + int(self.rng.choice([0, 3, 7, -2])), bar, 6, 3.5, p.vel - 8)
        self.note(ins, root, bar, 10, 5.5, p.vel)

    def g_chip_bass(self, ins, p: Part, bar: int) -> None:
        root = self._root(bar, p)
        for s in range(0, 16, 2):
            self.note(ins, root + (12 if (s // 2) % 2 else 0), bar, s, 1.4, p.vel)

    # --- harmony -------------------------------------------------------------------------------
    def g_jazz_comp(self, ins, p: Part, bar: int) -> None:
        v = self.voicing(bar, p.low, p.high, 4)
        voicing = [v[1], v[3], v[0] + 12 + (2 if self.rng.random() < 0.5 else 0)]  # rootless: 3, 7, 9
        hits = [(0, 3.0), (6, 1.5)] if self.rng.random() < 0.6 else [(2, 1.5), (10, 2.0)]
        for s, d in hits:
            for n in voicing:
                self.note(ins, n, bar, s, d, p.vel)

    def g_power8(self, ins, p: Part, bar: int) -> None:
        root = self._root(bar, p)
        for s in range(0, 16, 2):
            for n in (root, root + 7, root + 12):
                self.note(ins, n, bar, s, 1.6, p.vel - (0 if s % 4 == 0 else 10))

    def g_alberti(self, ins, p: Part, bar: int) -> None:
        v = self.voicing(bar, p.low, p.high, 3)
        pat = [v[0], v[2], v[1], v[2]]
        for i, s in enumerate(range(0, 16, 2)):
            self.note(ins, pat[i % 4], bar, s, 2.0, p.vel - (0 if i % 4 == 0 else 10))

    def _sustain(self, ins, p: Part, bar: int, which: slice) -> None:
        if bar % self.st.bars_per_chord == 0:
            v = self.voicing(bar, p.low, p.high, 4)[which]
            for n in v:
                self.note(ins, n, bar, 0, 16 * self.st.bars_per_chord - 0.3, p.vel)

    def g_sustain_mid(self, ins, p: Part, bar: int) -> None:
        self._sustain(ins, p, bar, slice(1, 3))

    def g_sustain_high(self, ins, p: Part, bar: int) -> None:
        self._sustain(ins, p, bar, slice(2, 4))

    def g_pad(self, ins, p: Part, bar: int) -> None:
        self._sustain(ins, p, bar, slice(0, 4))

    def g_techno_stab(self, ins, p: Part, bar: int) -> None:
        v = self.voicing(bar, p.low, p.high, 3)
        steps = (3, 10) if bar % 2 == 0 else (6, 14)
        for s in steps:
            for n in v:
                self.note(ins, n, bar, s, 0.7, p.vel)

    def g_house_stab(self, ins, p: Part, bar: int) -> None:
        v = self.voicing(bar, p.low, p.high, 4)
        for s in (2, 6, 10, 14) if bar % 2 == 0 else (2, 5, 10, 13):
            for n in v:
                self.note(ins, n, bar, s, 1.0, p.vel)

    def g_clav16(self, ins, p: Part, bar: int) -> None:
        v = self.voicing(bar, p.low, p.high, 3)[1:]
        for s in range(16):
            if s % 4 == 2 or self.rng.random() < 0.3:
                for n in v:
                    self.note(ins, n, bar, s, 0.5, p.vel - (0 if s % 4 == 2 else 15))

    def g_brass_stab(self, ins, p: Part, bar: int) -> None:
        if bar % 2 == 1:
            v = self.voicing(bar, p.low, p.high, 3)
            for s in (6, 7 if self.rng.random() < 0.5 else 10):
                for n in v:
                    self.note(ins, n, bar, s, 0.8, p.vel)

    def g_bossa_guitar(self, ins, p: Part, bar: int) -> None:
        v = self.voicing(bar, p.low, p.high, 4)[1:]
        for s in (0, 3, 6, 10, 12) if bar % 2 == 0 else (0, 4, 6, 10, 13):
            for k, n in enumerate(v):
                self.note(ins, n, bar, s + 0.08 * k, 1.8, p.vel)  # a gentle strum

    def g_skank(self, ins, p: Part, bar: int) -> None:
        v = self.voicing(bar, p.low, p.high, 3)
        for s in (4, 12):
            for n in v:
                self.note(ins, n, bar, s, 0.5, p.vel)

    def g_bubble(self, ins, p: Part, bar: int) -> None:
        v = self.voicing(bar, p.low, p.high, 3)
        for s in (2, 6, 10, 14):
            for n in v[1:]:
                self.note(ins, n, bar, s, 0.9, p.vel)

    def g_rhodes(self, ins, p: Part, bar: int) -> None:
        v = self.voicing(bar, p.low, p.high, 4)
        for k, n in enumerate(v):
            self.note(ins, n, bar, 0.12 * k, 9.0, p.vel)
        if self.rng.random() < 0.5:
            for n in v[1:]:
                self.note(ins, n, bar, 10, 4.0, p.vel - 12)

    def g_arp(self, ins, p: Part, bar: int) -> None:
        v = self.voicing(bar, p.low, p.high, 3)
        seq = v + [v[0] + 12] + v[::-1][1:]
        for s in range(16):
            self.note(ins, seq[s % len(seq)], bar, s, 0.9, p.vel)

    def g_ostinato(self, ins, p: Part, bar: int) -> None:
        v = self.voicing(bar, p.low, p.high, 3)
        pat = [v[0], v[0], v[2], v[0], v[1], v[0], v[2], v[1]]
        for i, s in enumerate(range(0, 16, 2)):
            self.note(ins, pat[i], bar, s, 1.6, p.vel - (0 if i % 2 == 0 else 15))

    def g_timpani(self, ins, p: Part, bar: int) -> None:
        root = self._root(bar, p)
        if bar % 2 == 0:
            self.note(ins, root, bar, 0, 4, p.vel)
        else:
            for s in (12, 13, 14, 15):
                self.note(ins, root, bar, s, 1, p.vel - 20 + 5 * (s - 12))

    def g_sparse_bells(self, ins, p: Part, bar: int) -> None:
        ch = self.chord(bar)
        for s in (0, 6, 10):
            if self.rng.random() < 0.35:
                pc = ch[int(self.rng.integers(len(ch)))] % 12
                self.note(ins, self.place(pc, p.low, p.high) + int(self.rng.choice([0, 12])), bar, s, 6, p.vel)

    # --- melodies ------------------------------------------------------------------------------
    def _melody(self, ins, p: Part, bar: int, density: float, dur_choices: tuple[float, ...]) -> None:
        """A motif-based line: rhythms repeat every two bars, strong beats land on chord tones."""
        if not hasattr(self, "_mel"):
            self._mel = {}
        st = self._mel.setdefault(p.role, {"rhythm": None, "pitch": None})
        if bar % 2 == 0 or st["rhythm"] is None:
            if bar % 4 == 0 or st["rhythm"] is None:
                steps, s = [], 0.0
                while s < 32:
                    d = float(self.rng.choice(dur_choices))
                    if self.rng.random() < density:
                        steps.append((s, d))
                    s += d
                st["rhythm"] = steps or [(0.0, 8.0)]
        pool = self.scale_pitches(p.low, p.high)
        if st["pitch"] is None:
            st["pitch"] = pool[len(pool) // 2]
        chord_pcs = {c % 12 for c in self.chord(bar)}
        half = (bar % 2) * 16
        for s, d in st["rhythm"]:
            if not half <= s < half + 16:
                continue
            cur = pool.index(min(pool, key=lambda q: abs(q - st["pitch"])))
            nxt = int(np.clip(cur + int(self.rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3])), 0, len(pool) - 1))
            pitch = pool[nxt]
            if (s - half) % 4 == 0:  # strong beat: nearest chord tone
                cands = [q for q in pool if q % 12 in chord_pcs]
                pitch = min(cands, key=lambda q: abs(q - pitch)) if cands else pitch
            st["pitch"] = pitch
            self.note(ins, pitch, bar, s - half, min(d, 16 - (s - half)) * 0.95, p.vel)

    def g_melody(self, ins, p: Part, bar: int) -> None:
        self._melody(ins, p, bar, 0.75, (2.0, 2.0, 4.0, 1.0))

    def g_melody_swing(self, ins, p: Part, bar: int) -> None:
        if bar % 4 != 3:  # leave space
            self._melody(ins, p, bar, 0.7, (2.0, 2.0, 2.0, 4.0, 6.0))

    def g_melody_slow(self, ins, p: Part, bar: int) -> None:
        self._melody(ins, p, bar, 0.9, (4.0, 8.0, 6.0, 2.0))

    def g_melody_sparse(self, ins, p: Part, bar: int) -> None:
        if bar % 2 == 1:
            self._melody(ins, p, bar, 0.5, (2.0, 3.0, 4.0))

    def g_melody_fast(self, ins, p: Part, bar: int) -> None:
        self._melody(ins, p, bar, 0.85, (1.0, 1.0, 2.0, 2.0))

    # --- drums -----------------------------------------------------------------------------------
    def _hits(self, ins, bar: int, pattern: dict[int, tuple[tuple[float, int], ...]]) -> None:
        for key, hits in pattern.items():
            for s, v in hits:
                self.note(ins, key, bar, s, 0.5, v)

    def d_jazz(self, ins, bar: int) -> None:
        pat = {RIDE: ((0, 80), (4, 90), (6, 60), (8, 80), (12, 90), (14, 60)),
               HH_P: ((4, 70), (12, 70)), KICK: ((0, 30), (4, 25), (8, 30), (12, 25))}
        self._hits(ins, bar, pat)
        for s in (2, 6, 10, 14, 11, 15):
            if self.rng.random() < 0.2:
                self.note(ins, SNARE, bar, s, 0.5, 45)

    def d_rock(self, ins, bar: int) -> None:
        kicks = ((0, 110), (8, 110)) + (((10, 95),) if self.rng.random() < 0.5 else ((6, 90),))
        pat = {KICK: kicks, SNARE: ((4, 115), (12, 115)), HH_C: tuple((s, 85 if s % 4 == 0 else 70) for s in range(0, 16, 2))}
        if bar % 4 == 0:
            pat[CRASH] = ((0, 100),)
        self._hits(ins, bar, pat)
        if bar % 4 == 3:
            for s, t in ((12, TOM_H), (13, TOM_H), (14, TOM_L), (15, TOM_L)):
                self.note(ins, t, bar, s, 0.5, 95)

    def d_techno(self, ins, bar: int) -> None:
        pat = {KICK: ((0, 120), (4, 120), (8, 120), (12, 120)), HH_C: tuple((s, 80) for s in (2, 6, 10, 14)),
               CLAP: ((4, 90), (12, 90))}
        pat[HH_P] = tuple((s, 40) for s in range(16) if s % 2 == 1)
        if bar % 8 == 7:
            pat[HH_O] = ((14, 80),)
        self._hits(ins, bar, pat)

    def d_house(self, ins, bar: int) -> None:
        pat = {KICK: ((0, 115), (4, 115), (8, 115), (12, 115)), HH_O: tuple((s, 85) for s in (2, 6, 10, 14)),
               CLAP: ((4, 95), (12, 95)), SHAKER: tuple((s, 45 + 15 * (s % 2)) for s in range(16))}
        self._hits(ins, bar, pat)

    def d_funk(self, ins, bar: int) -> None:
        pat = {KICK: ((0, 115), (3, 90), (10, 105)), SNARE: ((4, 115), (12, 115)),
               HH_C: tuple((s, 90 if s % 4 == 0 else 55 + 10 * (s % 2 == 0)) for s in range(16))}
        self._hits(ins, bar, pat)
        for s in (7, 9, 15):
            if self.rng.random() < 0.6:
                self.note(ins, SNARE, bar, s, 0.5, 35)  # ghost notes

    def d_bossa(self, ins, bar: int) -> None:
        clave = (0, 3, 6, 10, 13) if bar % 2 == 0 else (2, 4, 8, 11, 14)
        pat = {SIDE: tuple((s, 70) for s in clave), KICK: ((0, 60), (6, 50), (8, 60), (14, 50)),
               SHAKER: tuple((s, 40 + 20 * (s % 2 == 0)) for s in range(16))}
        self._hits(ins, bar, pat)

    def d_reggae(self, ins, bar: int) -> None:
        pat = {KICK: ((8, 110),), SIDE: ((8, 100),), HH_C: tuple((s, 70 if s % 4 == 2 else 55) for s in range(0, 16, 2))}
        if bar % 4 == 3:
            pat[SNARE] = ((14, 90), (15, 100))
        self._hits(ins, bar, pat)

    def d_lofi(self, ins, bar: int) -> None:
        kicks = ((0, 100), (7, 80), (10, 95)) if bar % 2 == 0 else ((0, 100), (10, 95), (11, 70))
        pat = {KICK: kicks, SNARE: ((4, 95), (12, 95)), HH_C: tuple((s, 55 + 10 * (s % 4 == 0)) for s in range(0, 16, 2))}
        self._hits(ins, bar, pat)

    def d_chip(self, ins, bar: int) -> None:
        pat = {KICK: ((0, 110), (8, 110), (10, 90)), SNARE: ((4, 110), (12, 110)),
               HH_C: tuple((s, 70) for s in range(0, 16, 2))}
        self._hits(ins, bar, pat)

    def d_cinematic(self, ins, bar: int) -> None:
        pat = {KICK: ((0, 115), (6, 95), (8, 110)), CRASH: ((0, 70),) if bar % 4 == 0 else ()}
        if bar % 2 == 1:
            pat[SNARE] = tuple((s, 60 + 4 * (s - 12)) for s in range(12, 16))
        self._hits(ins, bar, pat)

    def d_dnb(self, ins, bar: int) -> None:
        kicks = ((0, 115), (10, 110)) if bar % 2 == 0 else ((0, 115), (6, 90), (10, 110))
        pat = {KICK: kicks, SNARE: ((4, 115), (12, 115)), HH_C: tuple((s, 70 if s % 2 == 0 else 45) for s in range(16)),
               RIDE: ((2, 60), (6, 60), (10, 60), (14, 60))}
        self._hits(ins, bar, pat)
        if self.rng.random() < 0.5:
            self.note(ins, SNARE, bar, 7, 0.5, 50)
            self.note(ins, SNARE, bar, 15, 0.5, 60)


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
DEBIAN_SF2 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
INSTALL_HINT = "install it: apt-get install fluidsynth fluid-soundfont-gm (macOS: brew install fluid-synth)"


def find_soundfont(path: str | Path | None = None) -> Path:
    """The General MIDI soundfont to render with: ``path``, $PRESTO_SOUNDFONT, Debian's FluidR3_GM,
    else pretty_midi's bundled TimGM6mb."""
    for cand in (path, os.environ.get("PRESTO_SOUNDFONT")):
        if cand:
            p = Path(cand).expanduser()
            if not p.is_file():
                raise PrestoError(f"soundfont not found: {p}", "pass an existing .sf2 file")
            return p
    if DEBIAN_SF2.is_file():
        return DEBIAN_SF2
    try:
        import pretty_midi

        p = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
        if p.is_file():
            return p
    except ImportError:
        pass
    raise PrestoError("no General MIDI soundfont found", INSTALL_HINT)


def find_fluidsynth() -> str:
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise PrestoError("FluidSynth is not installed (needed to render the synthetic corpus)", INSTALL_HINT)
    return exe


def render_midi(pm, sample_rate: int, soundfont: Path, workdir: Path, exe: str = "fluidsynth",
                tail_seconds: float = 2.0, timeout: float = 120.0) -> np.ndarray:
    """Render a PrettyMIDI with the FluidSynth CLI; returns mono float32 at ``sample_rate``.

    FluidSynth 2.3's fast file renderer can keep rendering forever on some files (a sustained
    voice that never ends: seen here on 4 s clips that grew to 18 GB). So it writes headerless raw
    float32 stereo, and we stop it as soon as ``end_time + tail_seconds`` of audio exist: the first
    N samples do not depend on when the process is stopped, so the clip stays deterministic.
    """
    import time

    mid, raw = workdir / "clip.mid", workdir / "clip.raw"
    pm.write(str(mid))
    raw.unlink(missing_ok=True)
    frames = int(np.ceil((pm.get_end_time() + tail_seconds) * sample_rate))
    need = frames * 2 * 4  # stereo float32
    cmd = [exe, "-ni", "-q", "-g", "0.5", "-R", "0", "-C", "0", "-r", str(sample_rate),
           "-o", "synth.cpu-cores=1", "-o", "synth.polyphony=256", "-o", "synth.dynamic-sample-loading=1",
           "-o", "audio.file.format=float", "-o", "audio.file.type=raw", "-o", "audio.file.endian=little",
           "-F", str(raw), str(soundfont), str(mid)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        while proc.poll() is None:
            if raw.is_file() and raw.stat().st_size >= need:
                break
            if time.monotonic() - t0 > timeout:
                raise PrestoError(f"fluidsynth did not finish rendering a clip in {timeout:.0f} s")
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    if not raw.is_file() or (proc.returncode not in (0, -9) and raw.stat().st_size < need):
        raise PrestoError(f"fluidsynth failed ({proc.returncode}): {(err or '').strip()[:200]}", INSTALL_HINT)
    with open(raw, "rb") as f:
        buf = f.read(need)
    raw.unlink(missing_ok=True)
    n = len(buf) // 8
    data = np.frombuffer(buf[: n * 8], dtype="<f4").reshape(n, 2)
    if n < frames:  # the renderer stopped early (all voices released): pad with silence
        data = np.concatenate([data, np.zeros((frames - n, 2), np.float32)])
    return data.mean(axis=1).astype(np.float32)


def effects_chain(style: Style, tempo: float, rng: np.random.Generator):
    """The pedalboard mix chain of a style (reverb, compression, EQ, lo-fi filtering, bitcrush)."""
    from pedalboard import (Bitcrush, Chorus, Compressor, Delay, HighpassFilter, LowpassFilter,
                            LowShelfFilter, Pedalboard, Reverb)

    wet = float(rng.uniform(0.8, 1.2))
    fx = style.fx
    if fx == "jazz":
        ch = [HighpassFilter(40), Compressor(-18, 2.5), Reverb(room_size=0.35, wet_level=0.15 * wet, dry_level=0.9)]
    elif fx == "rock":
        ch = [HighpassFilter(50), Compressor(-16, 4), Reverb(room_size=0.3, wet_level=0.1 * wet, dry_level=0.9)]
    elif fx == "hall":
        ch = [Compressor(-20, 2), Reverb(room_size=0.75, damping=0.4, wet_level=0.3 * wet, dry_level=0.8)]
    elif fx == "club":
        ch = [HighpassFilter(30), Compressor(-20, 6, attack_ms=5, release_ms=80),
              Reverb(room_size=0.25, wet_level=0.08 * wet, dry_level=0.95)]
    elif fx == "ambient":
        ch = [Chorus(rate_hz=0.3, depth=0.3, mix=0.4), LowpassFilter(4500),
              Reverb(room_size=0.95, damping=0.3, wet_level=0.55 * wet, dry_level=0.6, width=1.0)]
    elif fx == "dry":
        ch = [HighpassFilter(40), Compressor(-18, 4), Reverb(room_size=0.2, wet_level=0.07 * wet, dry_level=0.95)]
    elif fx == "warm":
        ch = [LowpassFilter(6000), Compressor(-20, 2), Reverb(room_size=0.45, wet_level=0.18 * wet, dry_level=0.9)]
    elif fx == "dub":
        ch = [LowShelfFilter(120, 4.0), Delay(delay_seconds=0.75 * 60.0 / tempo, feedback=0.35, mix=0.18),
              Reverb(room_size=0.5, wet_level=0.15 * wet, dry_level=0.9), Compressor(-18, 3)]
    elif fx == "lofi":
        ch = [LowpassFilter(float(rng.uniform(2600, 3600))), Bitcrush(bit_depth=10), Compressor(-20, 4),
              Reverb(room_size=0.3, wet_level=0.1 * wet, dry_level=0.9)]
    elif fx == "chip":
        ch = [Bitcrush(bit_depth=float(rng.choice([5, 6]))), HighpassFilter(80)]
    else:
        ch = [Compressor(-18, 3), Reverb(room_size=0.3, wet_level=0.1, dry_level=0.9)]
    return Pedalboard(ch)


TARGET_RMS_DB = -20.0
PEAK_CEILING = 0.95


def master(audio: np.ndarray, n: int, sample_rate: int) -> np.ndarray:
    """Cut/pad to exactly ``n`` samples, fade the last 30 ms, normalise RMS to -20 dBFS with a
    0.95 peak ceiling."""
    x = np.zeros(n, dtype=np.float64)
    m = min(n, audio.shape[-1])
    x[:m] = audio[:m]
    fade = min(n, int(0.03 * sample_rate))
    if fade > 0:
        x[n - fade:] *= np.linspace(1.0, 0.0, fade)
    rms = math.sqrt(float(np.mean(x * x)))
    if rms < 1e-6:
        raise PrestoError("a synthetic clip rendered silent", "check the soundfont: " + INSTALL_HINT)
    x *= 10 ** (TARGET_RMS_DB / 20) / rms
    peak = float(np.abs(x).max())
    if peak > PEAK_CEILING:
        x *= PEAK_CEILING / peak
    return x.astype(np.float32)


def synth_clip(plan: dict[str, Any], seconds: float, sample_rate: int, soundfont: Path,
               workdir: Path, exe: str = "fluidsynth") -> np.ndarray:
    """Compose, render, mix and master one clip: mono float32 of exactly seconds*rate samples."""
    st = STYLE_BY_NAME[plan["labels"]["style"]]
    pm = Composer(plan, seconds).compose()
    dry = render_midi(pm, sample_rate, soundfont, workdir, exe)
    rng = _rng(plan["seed"], 0xEFF)
    board = effects_chain(st, float(plan["labels"]["tempo"]), rng)
    wet = board(dry[None, :].astype(np.float32), float(sample_rate), reset=True)[0]
    if st.fx == "lofi":  # vinyl: hiss and sparse crackle, drawn from the clip's seed
        n = wet.shape[-1]
        hiss = rng.normal(0.0, 1.0, n) * 10 ** (-52 / 20)
        crackle = np.zeros(n)
        k = int(rng.poisson(6 * n / sample_rate))
        crackle[rng.integers(0, n, size=k)] = rng.uniform(-1, 1, size=k) * 10 ** (-24 / 20)
        wet = wet + (hiss + crackle).astype(np.float32) * float(np.abs(wet).max() + 1e-6)
    return master(wet, int(round(seconds * sample_rate)), sample_rate)


# ----------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------
def _clip_name(plan: dict[str, Any]) -> str:
    return f"audio/{plan['index']:06d}_{plan['labels']['style']}.wav"


_WORKER: dict[str, Any] = {}


def _worker_init(soundfont: str, exe: str, tmp_root: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER["soundfont"] = Path(soundfont)
    _WORKER["exe"] = exe
    # inside the run's temporary folder, which the parent removes however the workers end
    _WORKER["tmp"] = Path(tempfile.mkdtemp(prefix="worker-", dir=tmp_root))


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Atomic PCM-16 wav write (what presto_cli.audio.write_audio does, without importing torch in
    the render workers, which would cost seconds of start-up per process)."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.wav", dir=str(path.parent))
    os.close(fd)
    try:
        sf.write(tmp, np.clip(audio, -1.0, 1.0), int(sample_rate), format="WAV", subtype="PCM_16")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _worker_job(args: tuple[dict[str, Any], float, int, str]) -> tuple[int, float, float]:
    plan, seconds, sample_rate, out = args
    audio = synth_clip(plan, seconds, sample_rate, _WORKER["soundfont"], _WORKER["tmp"], _WORKER["exe"])
    _write_wav(Path(out) / _clip_name(plan), audio, sample_rate)
    return plan["index"], float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))), float(np.abs(audio).max())


def synth_corpus(out: str | Path, n: int, seconds: float, seed: int = 0, sample_rate: int = 16000,
                 workers: int = 1, heldout: float = 0.0, soundfont: str | Path | None = None,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write ``n`` clips of ``seconds`` seconds plus manifest.jsonl, styles.json and synth.json.

    Returns a summary ``{"out", "n", "seconds", "sample_rate", "styles", "heldout", "elapsed_s",
    "clips_per_s", "workers", "soundfont"}``. Deterministic in (seed, n, seconds, sample_rate, heldout).
    """
    from presto_cli.io import atomic_write_json, atomic_write_text  # main process only

    if n < 1:
        raise PrestoError(f"--n must be at least 1, got {n}")
    if not 0.5 <= seconds <= 120:
        raise PrestoError(f"--seconds must be between 0.5 and 120, got {seconds}")
    if not 0.0 <= heldout < 1.0:
        raise PrestoError(f"--split-heldout must be in [0, 1), got {heldout}")
    if sample_rate < 8000 or sample_rate > 96000:
        raise PrestoError(f"--sample-rate must be between 8000 and 96000, got {sample_rate}")
    exe = find_fluidsynth()
    sf2 = find_soundfont(soundfont)
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    held = heldout_indices(seed, n, heldout)
    plans = [plan_clip(seed, i, heldout=i in held, use_heldout=heldout > 0) for i in range(n)]
    jobs = [(p, float(seconds), int(sample_rate), str(out)) for p in plans]
    t0 = time.perf_counter()
    workers = max(1, min(int(workers), n))
    done = 0
    tmp_root = tempfile.mkdtemp(prefix="presto-synth-")
    try:
        if workers == 1:
            _worker_init(str(sf2), exe, tmp_root)
            for j in jobs:
                _worker_job(j)
                done += 1
                if progress:
                    progress(done, n)
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")  # no forked torch/OpenMP state in the workers
            with ctx.Pool(workers, initializer=_worker_init, initargs=(str(sf2), exe, tmp_root)) as pool:
                for _ in pool.imap_unordered(_worker_job, jobs, chunksize=1):
                    done += 1
                    if progress:
                        progress(done, n)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    lines = []
    for p in plans:
        rec = {"path": _clip_name(p), "caption": p["caption"], "labels": p["labels"],
               "duration": float(seconds), "seed": p["seed"], "split": p["split"]}
        lines.append(json.dumps(rec))
    atomic_write_text(out / "manifest.jsonl", "\n".join(lines) + "\n")
    atomic_write_json(out / "styles.json", {"styles": [{"name": s.name, "title": s.title, "caption": s.canonical}
                                                       for s in STYLES]})
    info = {"out": str(out), "n": n, "seconds": float(seconds), "sample_rate": int(sample_rate), "seed": seed,
            "heldout": len(held), "heldout_fraction": heldout, "styles": len(STYLES),
            "soundfont": sf2.name, "workers": workers, "elapsed_s": round(elapsed, 3),
            "clips_per_s": round(n / max(elapsed, 1e-9), 3)}
    volatile = ("elapsed_s", "clips_per_s", "workers", "out")  # synth.json is deterministic too
    atomic_write_json(out / "synth.json", {k: v for k, v in info.items() if k not in volatile})
    return info
