"""benchmarks/results.py (issue 29): every table header says whether nearest-caption matching was on
and how many prompts it rewrote, counted from the clips' sidecars (hand-made eval documents)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from conftest import load_script


def _results():
    return load_script("benchmarks/results.py", "presto_results_match")


def _system(tmp: Path, name: str, match: str, rewritten: set[int], n: int = 5, sidecars: bool = True) -> dict:
    clips = []
    for i in range(n):
        f = tmp / name / f"p{i}.wav"
        f.parent.mkdir(parents=True, exist_ok=True)
        prompt = f"prompt {i}"
        if sidecars:
            cond = "nearest caption" if i in rewritten else prompt
            f.with_suffix(".wav.json").write_text(json.dumps({"prompt": prompt, "condition": cond}))
        clips.append({"file": str(f), "prompt": prompt})
    return {"name": name, "source": "model", "prompt_match": match, "clips": clips,
            "scores": {"fad": 1.0, "adherence": 0.5}}


def _doc(*systems) -> dict:
    return {"embedder": {"name": "presto-clap", "version": "v"}, "systems": list(systems)}


def test_every_table_header_states_matching_and_the_rewrite_count(tmp_path):
    R = _results()
    ev = _doc(_system(tmp_path / "ev", "demo-teacher", "auto", {1}), _system(tmp_path / "ev", "demo-s", "auto", {1}))
    steps = {2: _doc(_system(tmp_path / "s2", "demo-s", "auto", {0, 3}))}
    para = _doc(_system(tmp_path / "pa", "demo-teacher", "auto", {0, 1, 2, 3}),
                _system(tmp_path / "pa", "demo-s", "auto", {0, 1, 2}))
    written = _doc(_system(tmp_path / "pw", "demo-teacher", "off", set()), _system(tmp_path / "pw", "demo-s", "off", set()))
    grid = {"n": 5, "eval": {"ase_seed0": _doc(_system(tmp_path / "g", "ase-0", "auto", {2}))}}
    lat = {"8": {"eval": _doc(_system(tmp_path / "l", "demo-teacher", "auto", set())), "bench": {"rows": []}}}
    extra = {"paraphrase": para, "paraphrase_written": written, "heldout_written": written, "fad_latency": lat}
    a = SimpleNamespace(n=5, seeds=1, device="cpu", repeats=1, grid_n=5)
    text = R.render({"rows": []}, [ev], None, steps, a, grid=grid, extra=extra)
    auto = "Nearest-caption matching: auto (a prompt unlike every training wording is replaced by the nearest training caption)"
    # main table, step counts, paraphrases, held-out (paraphrase table), grid, FAD against latency
    assert f"{auto}; it rewrote 1 of 5 prompts for every model. (first seed set)" in text
    assert "Presto-S (demo-s) at other step counts (first seed set). " + auto + "; it rewrote 2 of 5 prompts" in text
    assert f"Paraphrases: {auto}; prompts it rewrote per model: demo-s 3/5, demo-teacher 4/5." in text
    assert f"Held-out: {auto}; it rewrote 1 of 5 prompts for every model." in text
    assert f"per run (held-out prompts, first seed set). {auto}; it rewrote 1 of 5 prompts for every model." in text
    assert f"every budget. {auto}; it rewrote 0 of 5 prompts for every model." in text
    assert R.match_note(written) == "Nearest-caption matching: off (every model conditions on the prompts as written)."
    old = _doc(_system(tmp_path / "old", "demo-s", "auto", set(), sidecars=False))
    assert "not recorded" in R.match_note(old)


def test_the_second_paraphrase_set_gets_its_own_table_with_gaps_to_held_out(tmp_path):
    R = _results()
    ev = _doc(_system(tmp_path / "ev", "demo-teacher", "auto", set()))
    ev["systems"][0]["scores"]["adherence"] = 0.9
    p2 = _doc(_system(tmp_path / "p2", "demo-teacher", "auto", {0, 1}))
    p2["systems"][0]["scores"]["adherence"] = 0.6
    p2w = _doc(_system(tmp_path / "p2w", "demo-teacher", "off", set()))
    p2w["systems"][0]["scores"]["adherence"] = 0.25
    p1 = _doc(_system(tmp_path / "p1", "demo-teacher", "auto", {0}))  # set 1 (its own table), adherence 0.5
    extra = {"paraphrase": p1, "paraphrase2": p2, "paraphrase2_written": p2w}
    a = SimpleNamespace(n=5, seeds=1, device="cpu", repeats=1, grid_n=5)
    text = R.render({"rows": []}, [ev], None, {}, a, extra=extra)
    assert "`assets/paraphrase_prompts2.jsonl`" in text
    row = next(line for line in text.splitlines() if line.startswith("| demo-teacher | 0.9 | 0.6 | 30 |"))
    assert row.endswith("| 0.25 | 65 |"), row
