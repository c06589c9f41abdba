"""benchmarks/gpu_check.py's CPU dry run (tiny shapes) and its time budget guard; gpu_table.py."""
import json
import subprocess
import sys

from conftest import CLI_ENV, ROOT


def _run(out, *args):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--device", "cpu",
                        "--no-compile", "--out", str(out), *args], capture_output=True, text=True, env=CLI_ENV,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads((out / "gpu_check.json").read_text())


def test_dry_run_measures_every_system_and_the_table_names_the_device(tmp_path):
    doc = _run(tmp_path, "--batches", "1", "2", "--precisions", "fp32", "bf16", "--repeats", "1")
    assert doc["complete"] and not doc["errors"] and doc["sample_rate"] == 44100
    got = {(r["system"], r["batch"], r["precision"]) for r in doc["rows"]}
    assert got == {(s, b, p) for s in ("teacher", "presto-s", "presto-l", "presto-ls") for b in (1, 2)
                   for p in ("fp32", "bf16")}
    sy = doc["systems"]  # the paper recipes' samplers and depths-per-bin schedule
    assert (sy["teacher"]["sampler"], sy["teacher"]["steps"], sy["teacher"]["cfg"]) == ("dpmpp_2m", 32, 2.0)
    assert (sy["presto-s"]["sampler"], sy["presto-s"]["steps"], sy["presto-s"]["nfe"]) == ("fewstep", 4, 4)
    assert sy["presto-l"]["dit"]["budget_embed"] and not sy["teacher"]["dit"]["budget_embed"]
    assert doc["schedule"]["mode"] == "keep-last" and len(doc["schedule"]["depths"]) == 5
    assert {d["batch"] for d in doc["decode"]} == {1, 2}
    assert all(r["model_s"] > 0 and r["total_s"] >= r["model_s"] for r in doc["rows"])
    md = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_table.py"), str(tmp_path / "gpu_check.json")],
                        capture_output=True, text=True, check=True).stdout
    assert "CPU dry run" in md and md.count("| presto-ls |") == 4


def test_budget_guard_still_writes_the_json(tmp_path):
    doc = _run(tmp_path, "--budget-s", "0.001", "--batches", "1", "--precisions", "fp32")
    assert doc["rows"] == [] and not doc["complete"]
    assert {s["system"] for s in doc["skipped"]} == {"teacher", "presto-s", "presto-l", "presto-ls"}
    assert all("time budget" in s["reason"] for s in doc["skipped"])
