"""benchmarks/results.py's README table: the music-embedder FAD column beside presto-clap's, the
MMD convention stated, and the music eval scoring the clips the presto-clap eval generated
(rendered from hand-made eval documents; the long results script itself is not run)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def _results():
    return load_script("benchmarks/results.py", "presto_results")


def _doc(emb: str, scores: dict, conv: str = "CMMD convention: unbiased MMD², Gaussian RBF σ = 10, ×1000",
         audio_dirs: dict | None = None) -> dict:
    return {"embedder": {"name": emb, "version": f"{emb}-v1"}, "conditions": {"mmd": conv},
            "systems": [{"name": n, "scores": s, **({"audio_dir": audio_dirs[n]} if audio_dirs else {})}
                        for n, s in scores.items()]}


def test_table_has_music_fad_beside_presto_clap_and_states_the_mmd_convention():
    R = _results()
    bench = {"rows": [{"model": "demo-teacher", "steps": 32, "nfe": 63}, {"model": "demo-s", "steps": 4, "nfe": 4}]}
    ev = [_doc("presto-clap", {"demo-teacher": {"fad": 0.5, "mmd2": 3.0}, "demo-s": {"fad": 0.7, "mmd2": 4.0}}),
          _doc("presto-clap", {"demo-teacher": {"fad": 0.7, "mmd2": 5.0}, "demo-s": {"fad": 0.9, "mmd2": 6.0}})]
    music = [_doc("music-features", {"demo-teacher": {"fad": 100.0}, "demo-s": {"fad": 250.0}, "real_train": {"fad": 40.0}}),
             _doc("music-features", {"demo-teacher": {"fad": 120.0}, "demo-s": {"fad": 270.0}})]
    real = _doc("presto-clap", {"real_train": {"fad": 0.1, "mmd2": 0.5}})
    a = SimpleNamespace(n=8, seeds=2, device="cpu", repeats=3)
    text = R.render(bench, ev, real, {}, a, music=music)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| model | sampler"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[7:10] == ["FAD (presto-clap) ↓", "FAD (music) ↓", "MMD ↓"]
    row = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in lines
           if line.startswith("| demo-") or line.startswith("| real audio")}
    assert row["demo-s"][8] == "260 ± 14" and row["demo-teacher"][8] == "110 ± 14"  # mean ± sd of 2 seed sets
    assert row["demo-s"][7] == "0.8 ± 0.14" and row["real audio (training split)"][8] == "40"
    assert "MMD: CMMD convention: unbiased MMD², Gaussian RBF σ = 10, ×1000." in text
    assert "music-feature embedder (music-features-v1)" in text
    # without the music eval the column is there, empty
    plain = R.render(bench, ev, real, {}, a)
    assert "FAD (music) ↓" in plain and "| demo-s |" in plain


def test_music_eval_rescoring_the_generated_clips(tmp_path, monkeypatch):
    R = _results()
    calls = []
    monkeypatch.setattr(R, "presto", lambda *args: calls.append(args) or {"systems": []})
    held = tmp_path / "synth-heldout"
    held.mkdir()
    a = SimpleNamespace(data=tmp_path / "synth", out=tmp_path / "results")
    monkeypatch.setattr(R, "ROOT", tmp_path)  # no bundled ref_heldout_music.npz here: the folder is used
    ev = [_doc("presto-clap", {"demo-s": {}}, audio_dirs={"demo-s": "/x/eval_audio/demo-s"}),
          _doc("presto-clap", {"demo-s": {}}, audio_dirs={"demo-s": "/x/eval_seed1_audio/demo-s"})]
    docs = R.music_eval(a, ev, tmp_path / "real_train")
    assert len(docs) == 2 and len(calls) == 2
    first = list(calls[0])
    assert first[:5] == ["eval", "--gen", "/x/eval_audio/demo-s", "--gen", str(tmp_path / "real_train")]
    assert first[first.index("--embedder") + 1] == "music" and first[first.index("--ref") + 1] == str(held)
    assert "/x/eval_seed1_audio/demo-s" in calls[1] and str(tmp_path / "real_train") not in calls[1]
    held.rmdir()
    assert R.music_eval(a, ev, None) is None  # no reference: skipped, said on stderr


def test_grid_table_reports_the_spread_over_training_seeds_and_per_bin_errors():
    R = _results()
    evals, mus = {}, {}
    for cell, fads in (("ase", (1.0, 3.0, 2.0)), ("keep-last-st", (0.5, 0.7, 0.6))):
        for k, f in enumerate(fads):
            name = f"{cell}_seed{k}"
            evals[name] = _doc("presto-clap", {name: {"fad": f}})
            mus[name] = {"fad": 10.0 * f}
    per_bin = {"depths_low_to_high_noise": [8, 6], "results": {
        "ase/seed0": {"dn": [0.1, 0.5]}, "ase/seed1": {"dn": [0.3, 0.7]}, "ase/seed2": {"dn": [0.2, 0.6]},
        "keep-last-st/seed0": {"dn": [0.1, 0.2]}, "keep-last-st/seed1": {"dn": [0.1, 0.2]},
        "keep-last-st/seed2": {"dn": [0.1, 0.2]}}}
    grid = {"n": 16, "eval": evals, "music": _doc("music-features", mus), "per_bin": per_bin}
    lines = R.grid_table(grid)
    rows = {l.split("|")[1].strip(): [c.strip() for c in l.strip("|").split("|")] for l in lines
            if l.startswith("| ase") or l.startswith("| keep-last")}
    assert rows["ase"][1:5] == ["early exit", "off", "no", "3"]
    assert rows["ase"][5] == "2 ± 1" and rows["ase"][6] == "20 ± 10"  # FAD mean ± sd over the seeds
    assert rows["ase"][7] == "0.4 ± 0.1" and rows["ase"][8] == "0.2 ± 0.1" and rows["ase"][9] == "0.6 ± 0.1"
    assert rows["keep-last-st"][5] == "0.6 ± 0.1" and rows["keep-last-st"][9] == "0.2 ± 0"
    assert "early-exit-st" not in "\n".join(lines)  # cells without runs are left out


def test_tables_a_run_cannot_rescore_are_carried_over_under_a_note():
    """A results run on a machine without the training runs keeps the previous grid, latency and
    per-bin tables (under one note) instead of deleting them; a table it did produce replaces the
    old one; carrying twice gives the same block."""
    R = _results()
    old = ("main table\n\nLayer methods compared (old)\n\n| grid old |\n\nFAD against latency at other sampler "
           "budgets (old)\n\n| lat old |\n\nLayer dropping per noise bin (cfg 1)\n\n| d1 old |\n\n"
           "Layer dropping per noise bin (cfg 2)\n\n| d2 old |\n")
    new = "main table, new\n\n| new |\n"
    out = R.carry_over(old, new)
    assert out.startswith(new.rstrip("\n")) and out.count(R.CARRIED) == 1
    for t in ("| grid old |", "| lat old |", "| d1 old |", "| d2 old |"):
        assert t in out and out.index(R.CARRIED) < out.index(t)
    assert R.carry_over(out.replace(R.CARRIED, ""), new) == out  # the next run carries the same tables
    fresh = R.carry_over(old, new + "\nLayer methods compared (new)\n\n| grid new |\n")
    assert "| grid new |" in fresh and "| grid old |" not in fresh and "| lat old |" in fresh
    assert R.carry_over(old, old) == old  # nothing missing: nothing carried, no note


def test_texture_tempo_key_table_averages_seed_sets_and_shows_the_real_ceiling():
    R = _results()
    tex = lambda f: {"frame_change_ratio": f, "speckle_ratio": 1.5, "boundary_ratio": 1.02,  # noqa: E731
                     "peaks_per_frame_ratio": 1.1, "peak_persistence_ratio": 0.9, "level_p5_diff_db": -2.0,
                     "level_p50_diff_db": -4.0, "level_p95_diff_db": -6.0}
    ev = [_doc("presto-clap", {"demo-teacher": {"texture": tex(1.0), "tempo_acc1": 0.2, "key_exact": 0.1}}),
          _doc("presto-clap", {"demo-teacher": {"texture": tex(1.2), "tempo_acc1": 0.4, "key_exact": 0.3}})]
    ev[0]["texture_reference"] = {"n": 96, "boundary_ratio": 0.97, "data": "synth: 96 clips"}
    real_tk = {"systems": [{"n": 50, "scores": {"tempo_acc1": 0.66, "key_exact": 0.45}}]}
    lines = R.texture_tempo_key_table(ev, ["demo-teacher"], real_tk)
    header = next(line for line in lines if line.startswith("| model |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    row = dict(zip(cols, (c.strip() for c in next(line for line in lines if line.startswith("| demo-teacher"))
                          .strip("|").split("|"))))
    assert row["frame change ×"] == "1.1 ± 0.14" and row["speckle ×"] == "1.5 ± 0"
    assert row["tempo ±4%"] == "0.3 ± 0.14" and row["key exact"] == "0.2 ± 0.14"
    real = dict(zip(cols, (c.strip() for c in next(line for line in lines if line.startswith("| real audio"))
                           .strip("|").split("|"))))
    assert real["tempo ±4%"] == "0.66" and real["key exact"] == "0.45" and real["frame change ×"] == "–"
    assert "50 real held-out clips" in "\n".join(lines)
    # an evaluation without texture scores: no table
    assert R.texture_tempo_key_table([_doc("presto-clap", {"demo-teacher": {"fad": 1.0}})], ["demo-teacher"], None) == []


def test_link_split_links_only_the_split_and_writes_a_manifest_its_eval_can_read(tmp_path):
    R = _results()
    corpus = tmp_path / "synth"
    (corpus / "audio").mkdir(parents=True)
    rows = [{"path": f"audio/c{i}.wav", "caption": f"clip {i}", "split": "heldout" if i % 3 == 0 else "train",
             "labels": {"tempo": 100 + i}} for i in range(9)]
    for r in rows:
        (corpus / r["path"]).write_bytes(b"x")
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = tmp_path / "out" / "real_heldout" / "audio"
    assert R.link_split(corpus, "heldout", 2, held, manifest=held.parent / "manifest.jsonl") == 2
    assert sorted(p.name for p in held.iterdir()) == ["c0.wav", "c3.wav"]  # the first 2 held-out clips only
    man = [json.loads(l) for l in (held.parent / "manifest.jsonl").read_text().splitlines()]
    assert [m["path"] for m in man] == ["audio/c0.wav", "audio/c3.wav"] and man[1]["labels"] == {"tempo": 103}
    assert all((held.parent / m["path"]).resolve() == (corpus / "audio" / Path(m["path"]).name).resolve() for m in man)
    train = tmp_path / "out" / "real_train"
    assert R.link_split(corpus, "train", 100, train) == 6 and not (train / "manifest.jsonl").exists()
    assert R.link_split(tmp_path / "nothing", "train", 5, tmp_path / "x") == 0 and not (tmp_path / "x").exists()


def test_grid_table_without_fad_shows_unguided_and_guided_per_bin_errors():
    """The grid at recipe length is scored by per-bin errors only (issue 29 item 3): no FAD columns,
    the mean per-bin error without CFG and at the sampler's CFG, mean ± sd over the seeds."""
    R = _results()
    res = {f"ase/seed{k}": {"dn": [0.1 + 0.1 * k, 0.5]} for k in range(3)}
    res.update({f"keep-last-st/seed{k}": {"dn": [0.1, 0.3]} for k in range(3)})
    guided = {f"ase/seed{k}": {"dn": [1.0, 2.0 + k]} for k in range(3)}
    grid = {"n": 0, "eval": {}, "music": None, "runs": list(res),
            "per_bin": {"depths_low_to_high_noise": [8, 3], "results": res},
            "per_bin_cfg": [{"cfg": 2.0, "depths_low_to_high_noise": [8, 3], "results": guided}]}
    lines = R.grid_table(grid)
    header = next(line for line in lines if line.startswith("| cell"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert not any("FAD" in c for c in cols) and "at CFG 2, mean ↓" in cols
    rows = {l.split("|")[1].strip(): dict(zip(cols, (c.strip() for c in l.strip("|").split("|")))) for l in lines
            if l.startswith("| ase") or l.startswith("| keep-last")}
    assert rows["ase"]["seeds"] == "3" and rows["ase"]["per-bin error, mean ↓"] == "0.35 ± 0.05"
    assert rows["ase"]["k=8"] == "0.2 ± 0.1" and rows["ase"]["at CFG 2, mean ↓"] == "2 ± 0.5"
    assert rows["keep-last-st"]["at CFG 2, mean ↓"] == "–" and rows["keep-last-st"]["k=3"] == "0.3 ± 0"
    assert "No FAD" in "\n".join(lines)


def test_splice_runs_replaces_the_run_tables_in_place_and_keeps_the_rest():
    """--runs-only: each run-scored section it made replaces the old one at its place (both per-bin
    pieces by the new two); sections it did not make and every other table stay as they were."""
    R = _results()
    old = ("main table\n\n| main |\n\nLayer dropping per noise bin (cfg 1)\n\n| d1 old |\n\n"
           "Layer dropping per noise bin (cfg 2)\n\n| d2 old |\n\nLayer methods compared (old)\n\n| grid old |\n\n"
           "FAD against latency at other sampler budgets (old)\n\n| lat old |\n")
    runs = ("\nLayer methods compared (new)\n\n| grid new |\n\nLayer dropping per noise bin (cfg 1, new)\n\n"
            "| d1 new |\n\nLayer dropping per noise bin (cfg 2, new)\n\n| d2 new |\n")
    out = R.splice_runs(old, runs)
    for gone in ("| d1 old |", "| d2 old |", "| grid old |"):
        assert gone not in out
    order = [out.index(t) for t in ("| main |", "| d1 new |", "| d2 new |", "| grid new |", "| lat old |")]
    assert order == sorted(order), out
    assert out.count("Layer dropping per noise bin") == 2
    assert R.splice_runs(out, runs) == out  # splicing again changes nothing


def test_latency_table_matches_bench_rows_of_run_paths_and_orders_by_model_then_steps():
    R = _results()

    def point(s, names):
        ev = _doc("presto-clap", {R.Path(n).parent.name if n.endswith(".safetensors") else n: {"fad": 0.1 * s}
                                  for n in names})
        return {"eval": ev, "music": None, "n": 96,
                "bench": {"rows": [{"model": n, "nfe": 2 * s - 1, "latency_s": s / 10} for n in names]}}

    run = "/x/runs/presto-l-cfg/model.safetensors"
    fl = {16: point(16, ["demo-teacher", "demo-l", run]), 8: point(8, ["demo-teacher", "demo-l", run]),
          6: point(6, ["demo-teacher"])}
    lines = R.latency_table(fl)
    rows = [[c.strip() for c in l.strip("|").split("|")] for l in lines if l.startswith("| demo-") or l.startswith("| presto")]
    assert [(r[0], r[1]) for r in rows] == [("demo-teacher", "6"), ("demo-teacher", "8"), ("demo-teacher", "16"),
                                            ("demo-l", "8"), ("demo-l", "16"), ("presto-l-cfg", "8"), ("presto-l-cfg", "16")]
    assert rows[-1][2:5] == ["31", "1.6", "1.6"]  # the run's bench row found through its system name
    assert "(96 clips" in "\n".join(lines)


def test_fad_latency_plot_is_written_atomically(tmp_path):
    R = _results()
    ev = _doc("presto-clap", {"demo-teacher": {"fad": 0.5}, "demo-l": {"fad": 0.6}})
    fl = {8: {"eval": ev, "music": _doc("music", {"demo-teacher": {"fad": 40.0}}),
              "bench": {"rows": [{"model": "demo-teacher", "latency_s": 0.5}, {"model": "demo-l", "latency_s": 0.4}]}},
          16: {"eval": ev, "music": None, "bench": {"rows": [{"model": "demo-teacher", "latency_s": 1.0}]}}}
    out = R.fad_latency_plot(fl, tmp_path / "docs" / "fad_latency.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list((tmp_path / "docs").glob("*.tmp.png"))


def test_recipes_table_ratios_to_the_teacher_and_the_runs_final_d_gap(tmp_path):
    """Issue 29 items 5-6: each recipe run under the bundled model it is compared with; FAD ratios are
    of the seed-set means to the teacher's; d_gap is the mean over the run's last 400 iterations."""
    R = _results()
    run = tmp_path / "runs" / "presto-s-paper"
    run.mkdir(parents=True)
    # d_gap 0.1 up to step 600, then 0.5: the last 400 iterations (601-1000) hold only 0.5 ...
    rows = [{"step": s, "d_gap": 0.1 if s <= 600 else 0.5} for s in range(10, 1001, 10)]
    rows.insert(3, {"step": 35, "event": "checkpoint"})  # ... and lines without d_gap are skipped
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    assert abs(R.final_d_gap(run) - 0.5) < 1e-12
    assert abs(R.final_d_gap(run, tail=500) - (10 * 0.1 + 40 * 0.5) / 50) < 1e-12
    assert R.final_d_gap(tmp_path) is None

    def tex(fc, p50):
        return {"frame_change_ratio": fc, "level_p50_diff_db": p50}

    def ev(t, s, p):
        return {"embedder": {"name": "presto-clap"}, "systems": [
            {"name": "demo-teacher", "scores": {"fad": t, "adherence": 0.9, "texture": tex(1.2, -2.0)}},
            {"name": "demo-s", "scores": {"fad": s, "adherence": 0.8, "texture": tex(1.3, -1.0)}},
            {"name": "presto-s-paper", "scores": {"fad": p, "adherence": 0.85, "texture": tex(1.5, -15.0)}}]}

    def mus(t, s, p):
        return {"systems": [{"name": n, "scores": {"fad": v}} for n, v in
                            (("demo-teacher", t), ("demo-s", s), ("presto-s-paper", p))]}

    rec = {"n": 96, "eval": [ev(0.10, 0.13, 0.09), ev(0.12, 0.15, 0.11)], "music": [mus(20, 30, 26), mus(22, 32, 28)],
           "runs": [{"name": "presto-s-paper", "path": str(run / "model.safetensors"), "base": "demo-s",
                     "what": "the paper's recipe", "d_gap": 0.5}]}
    text = "\n".join(R.recipes_table(rec))
    assert text.lstrip("\n").startswith("Distillation recipes compared")
    rows = {l.split(" | ")[0].strip("| "): l for l in text.splitlines() if l.startswith("| ") and "---" not in l}
    # presto-clap: 0.10 / 0.11 = 0.91x, 0.14 / 0.11 = 1.27x; music: 27 / 21 = 1.29x, 31 / 21 = 1.48x
    assert "| 0.91x |" in rows["presto-s-paper"] and "| 1.29x |" in rows["presto-s-paper"]
    assert "| 1.27x |" in rows["demo-s"] and "| 1.48x |" in rows["demo-s"]
    assert "| 1.00x |" in rows["demo-teacher"]
    assert rows["presto-s-paper"].rstrip(" |").endswith("0.5") and rows["demo-s"].rstrip(" |").endswith("–")
    assert "1.5" in rows["presto-s-paper"] and "-15" in rows["presto-s-paper"]
    order = [text.index(f"| {n} |") for n in ("demo-teacher", "demo-s", "presto-s-paper")]
    assert order == sorted(order)
    # the section is run-scored: --runs-only splices it in place of an old one and keeps the rest
    old = "main\n\n| main |\n\nDistillation recipes compared (old)\n\n| rec old |\n"
    out = R.splice_runs(old, text)
    assert "| rec old |" not in out and "| main |" in out and out.count("Distillation recipes compared") == 1
