"""Composition: one clip's plan -> a PrettyMIDI score on a 16-steps-per-bar grid."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from presto_cli.data.synth.plan import _rng
from presto_cli.data.synth.styles import KEY_NAMES, SCALES, STYLE_BY_NAME, Part

# GM percussion keys
KICK, SIDE, SNARE, CLAP, SNARE2, HH_C, HH_P, HH_O = 36, 37, 38, 39, 40, 42, 44, 46
CRASH, RIDE, RIDE_BELL, TAMB, COWBELL, SHAKER, CLAVES, TOM_L, TOM_H = 49, 51, 53, 54, 56, 70, 75, 45, 50


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

