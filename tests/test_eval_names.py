"""Systems in one evaluation get distinct names (two runs' model.safetensors used to collide and
overwrite each other's clips)."""
import pytest

from presto_cli.errors import PrestoError
from presto_cli.eval.evaluate import EvalConfig, evaluate, system_name


def test_system_names():
    assert system_name("demo-s") == "demo-s"
    assert system_name("runs/demo/ase/model.safetensors") == "ase"
    assert system_name("runs/demo/presto-s/model.safetensors") == "presto-s"
    assert system_name("runs/demo/grid/ase/seed1/model.safetensors") == "ase_seed1"  # training seeds
    assert system_name("/x/my model.safetensors") == "my_model"


def test_colliding_names_refused(tmp_path):
    a, b = tmp_path / "a" / "m.safetensors", tmp_path / "b" / "m.safetensors"
    cfg = EvalConfig(models=[str(a), str(b)], metrics=["fad"], ref=str(tmp_path), embedder="mel")
    with pytest.raises(PrestoError, match="same name"):
        evaluate(cfg)
