"""The styles table: musical vocabulary, General MIDI caption names and the 14 :data:`STYLES`.

A :class:`Style` says what a clip of that style is made of (parts with candidate GM programs and the
generator that writes their notes, drum pattern and kits, tempo range, modes, moods, chord
progressions, swing, effects chain) and the words its captions use.
"""
from __future__ import annotations

from dataclasses import dataclass

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


def style_captions() -> dict[str, str]:
    """Style name -> canonical caption (what ``styles.json`` holds)."""
    return {s.name: s.canonical for s in STYLES}
