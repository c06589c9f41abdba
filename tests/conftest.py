"""Test-wide settings: offline hub, one thread, repo root importable."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# `presto eval` reuses clips it generated before (presto_cli/eval/clip_cache.py): a clip cache per
# test session, so that no test reuses clips an earlier session left in ~/.cache
os.environ["PRESTO_CLIP_CACHE"] = tempfile.mkdtemp(prefix="presto-test-clips-")
atexit.register(shutil.rmtree, os.environ["PRESTO_CLIP_CACHE"], True)

import torch  # noqa: E402

torch.set_num_threads(1)

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def load_script(rel: str, name: str):
    """A script under the repo root (e.g. benchmarks/results.py) imported as module ``name``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def presto(*args, check=True, timeout=600, cwd=None):
    """Run the real `presto` entry point in a subprocess; returns CompletedProcess (text)."""
    r = subprocess.run([sys.executable, "-m", "presto_cli", *map(str, args)], capture_output=True,
                       text=True, env=CLI_ENV, timeout=timeout, cwd=cwd or ROOT)
    if check and r.returncode != 0:
        raise AssertionError(f"presto {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory):
    """A synthetic corpus, a tiny autoencoder and a tiny audio teacher, made with the tiny recipes
    through the real CLI (shared by every end-to-end test of a session)."""
    d = tmp_path_factory.mktemp("chain")
    data = d / "synth"
    presto("data", "synth", "--out", data, "--n", 8, "--seconds", 1.5, "--seed", 0)
    presto("pretrain", ROOT / "recipes/tiny/autoencoder.yaml", f"data.path={data}", "--out", d / "ae")
    codec = d / "ae" / "model.safetensors"
    presto("pretrain", ROOT / "recipes/tiny/teacher.yaml", f"data.path={data}", f"data.codec={codec}",
           "data.clip_seconds=1.0", "model.in_channels=8", "model.max_frames=64", "train.steps=20",
           "train.batch_size=8", "--out", d / "teacher")
    return {"dir": d, "data": data, "codec": codec, "teacher": d / "teacher" / "model.safetensors"}
