"""Start-up: each command imports only what it needs (`presto --help` no torch; `presto generate`
neither transformers nor torch._dynamo, which cost seconds per call), and `presto bench --cold`
times every stage of a fresh generate process."""
import json
import subprocess
import sys

from conftest import CLI_ENV, ROOT, presto

PROBE = """
import sys
from presto_cli.cli import app
try:
    app(sys.argv[1:])
except SystemExit as e:
    assert not e.code, e.code
print("LOADED:", *(m for m in ("torch", "transformers", "torch._dynamo") if m in sys.modules))
"""


def _loaded(*args) -> set[str]:
    r = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True,
                       env=CLI_ENV, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.splitlines()[-1].split()[1:])


def test_help_imports_no_torch():
    assert _loaded("--help") == set()
    assert _loaded("generate", "--help") == set()


def test_generate_imports_no_transformers(tmp_path):
    mods = _loaded("generate", "jazz trio", "-o", tmp_path / "a.wav", "--seed", "0")
    assert "torch" in mods and "transformers" not in mods and "torch._dynamo" not in mods, mods
    assert (tmp_path / "a.wav").is_file()


def test_bench_cold_times_every_stage():
    from presto_cli.eval.cold_start import STAGES

    doc = json.loads(presto("bench", "--cold", "--repeats", "1", "--json").stdout)
    st = doc["stages_s"]
    assert list(st)[:len(STAGES)] == list(STAGES) and all(st[k] >= 0 for k in STAGES)
    assert abs(sum(v for k, v in st.items() if k != "total") - st["total"]) < 0.01
    assert doc["cli_generate_s"]["best"] > 0


def test_small_models_run_on_one_cpu_thread_unless_the_user_chose(monkeypatch):
    from presto_cli.runtime import SMALL_MODEL_PARAMS, cpu_threads_for

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("PRESTO_THREADS", raising=False)
    assert cpu_threads_for(9_000_000, "cpu") == 1  # the demo models
    assert cpu_threads_for(SMALL_MODEL_PARAMS, "cpu") is None  # large: torch's default
    assert cpu_threads_for(9_000_000, "cuda:0") is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu_threads_for(9_000_000, "cpu") is None  # the user's choice stands
    monkeypatch.setenv("PRESTO_THREADS", "3")
    assert cpu_threads_for(9_000_000, "cpu") == 3
