"""Tempo and key written in prompts, given as flags and read from dataset rows (text/musical.py)."""
import pytest

from presto_cli.errors import PrestoError
from presto_cli.text.musical import (check_bpm, check_key, key_index, key_name, parse_bpm, parse_key,
                                     parse_prompt, row_tempo_key)

E_MINOR, F_SHARP_MAJOR, B_FLAT_MINOR, A_FLAT_MAJOR = 16, 6, 22, 8


@pytest.mark.parametrize("text,bpm", [
    ("funk groove at 104 BPM", 104), ("104bpm techno", 104), ("tempo 104, dark", 104),
    ("Tempo: 96", 96), ("a waltz, 90 beats per minute", 90), ("slow and sleepy, around 70 bpm", 70),
    ("genre: house. tempo: 124 BPM.", 124), ("70-80 BPM lounge", 75), ("between 60 and 80 bpm", 70),
    ("drum and bass at 174.5 bpm", 174.5),
])
def test_bpm_written_in_a_prompt(text, bpm):
    assert parse_bpm(text) == pytest.approx(bpm)


@pytest.mark.parametrize("text", [
    "4 beats to the bar", "a song with 3 guitars", "in 4/4 time", "the 1990s sound", "tempo rubato",
    "12 bar blues", "at 5 bpm",  # outside 20-400: not a tempo
    "2024 remix at 1000 bpm", "a 1120 bpm blur", "tempo 1120",
])
def test_no_bpm(text):
    assert parse_bpm(text) is None


@pytest.mark.parametrize("text,key", [
    ("funk groove in E minor", E_MINOR), ("F# major anthem", F_SHARP_MAJOR), ("Bb minor ballad", B_FLAT_MINOR),
    ("A-flat major hymn", A_FLAT_MAJOR), ("it is in D flat major at 71 BPM", 1), ("C sharp minor nocturne", 13),
    ("sonata in A minor", 21), ("in a minor key", 21), ("Calm music at 68 BPM in C major.", 0),
    ("Key of G major", 7), ("E min, slow", E_MINOR), ("B major", 11), ("Eb major", 3),
])
def test_key_written_in_a_prompt(text, key):
    assert parse_key(text) == key


@pytest.mark.parametrize("text", [
    "minor changes in the harmony", "A minor change of plan", "a major label sound", "major seventh chords",
    "Em7 chords", "a b-side in dorian", "band minor", "in e", "grade B music, minor",
])
def test_no_key(text):
    assert parse_key(text) is None


def test_parse_prompt_returns_both_and_names_round_trip():
    assert parse_prompt("Funk at 104 BPM in E minor") == (104.0, E_MINOR)
    assert parse_prompt("a slow low drone") == (None, None)
    assert [key_name(i) for i in (0, 6, 12, 22)] == ["C major", "F# major", "C minor", "Bb minor"]
    assert key_name(-1) is None and key_name(None) is None
    for i in range(24):  # every name parses back to its index
        assert check_key(key_name(i)) == i and parse_key(f"in {key_name(i)}") == i
    assert key_index(11, True) == 23


def test_flags_accept_the_usual_spellings_and_refuse_others():
    for name, key in (("E minor", E_MINOR), ("e Minor", E_MINOR), ("Em", E_MINOR), ("F#", F_SHARP_MAJOR),
                      ("f sharp major", F_SHARP_MAJOR), ("Bbm", B_FLAT_MINOR), ("A-flat major", A_FLAT_MAJOR),
                      ("C", 0), ("CM", 0), ("Cm", 12)):
        assert check_key(name) == key, name
    for bad in ("H minor", "E dorian", "minor", "", "E minor major", "12"):
        with pytest.raises(PrestoError, match="unknown key"):
            check_key(bad)
    assert check_bpm(104) == 104.0 and check_bpm(None) is None and check_bpm(20) == 20.0
    for bad in (19.9, 401, 0, -5, float("nan"), float("inf")):
        with pytest.raises(PrestoError, match="outside 20-400"):
            check_bpm(bad)


def test_dataset_rows():
    # the synthetic corpus: labels win over the caption
    row = {"path": "a.wav", "caption": "Techno at 130 BPM in C major.",
           "labels": {"tempo": 128, "key": "F#", "mode": "minor"}}
    assert row_tempo_key(row) == (128.0, 18)
    # CSV columns (strings), a key with its mode in one field
    assert row_tempo_key({"path": "a.wav", "caption": "", "BPM": "92", "key": "Bb minor"}) == (92.0, B_FLAT_MINOR)
    # a sidecar's tempo + key + mode fields; a key index
    assert row_tempo_key({"path": "a", "caption": "", "tempo": 70, "key": "D", "mode": "major"}) == (70.0, 2)
    assert row_tempo_key({"path": "a", "caption": "", "key": 16}) == (None, E_MINOR)
    # only the caption names them
    assert row_tempo_key({"path": "a", "caption": "Calm acoustic music at 68 BPM in C major."}) == (68.0, 0)
    # nothing, or unusable values: unknown
    assert row_tempo_key({"path": "a", "caption": "rain on a roof"}) == (None, None)
    bpm, key = row_tempo_key({"path": "a", "caption": "", "bpm": "fast", "key": "H", "mode": "minor"})
    assert bpm is None and key is None
    assert row_tempo_key({"path": "a", "caption": "", "bpm": 5000, "tempo": 90}) == (90.0, None)
