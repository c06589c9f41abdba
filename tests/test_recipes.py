"""Typed recipes: unknown keys, wrong types, base includes, dotted overrides."""
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from presto_cli.errors import PrestoError
from presto_cli.recipes import (BaseRecipe, apply_overrides, dataclass_from_dict, load_recipe,
                                read_yaml_with_base, register_stage)


@dataclass
class _Sub:
    width: int = 8
    ratio: float = 1.5
    name: str = "x"
    flags: list[int] = field(default_factory=lambda: [1, 2])


@register_stage("_unit")
@dataclass
class _UnitRecipe(BaseRecipe):
    model: _Sub = field(default_factory=_Sub)


def test_unknown_key_suggests_nearest():
    with pytest.raises(PrestoError) as e:
        dataclass_from_dict(_Sub, {"widht": 3}, "model")
    assert "model.widht" in str(e.value) and "did you mean 'width'" in str(e.value)


def test_wrong_type_names_key():
    with pytest.raises(PrestoError) as e:
        dataclass_from_dict(_Sub, {"width": "wide"}, "model")
    assert "model.width" in str(e.value) and "integer" in str(e.value)
    with pytest.raises(PrestoError, match=r"model.flags\[1\]"):
        dataclass_from_dict(_Sub, {"flags": [1, "a"]}, "model")


def test_types_coerced():
    s = dataclass_from_dict(_Sub, {"width": 4.0, "ratio": 2, "name": 7})
    assert s.width == 4 and isinstance(s.width, int)
    assert s.ratio == 2.0 and isinstance(s.ratio, float)
    assert s.name == "7"
    assert dataclass_from_dict(_Sub, {"ratio": "1e-4"}).ratio == pytest.approx(1e-4)


def test_base_include_and_overrides(tmp_path):
    (tmp_path / "common.yaml").write_text("seed: 3\ntrain: {steps: 100, lr: 0.001}\nmodel: {width: 16}\n")
    (tmp_path / "r.yaml").write_text("base: common.yaml\nstage: _unit\ntrain: {steps: 10}\n")
    r = load_recipe(tmp_path / "r.yaml", ["train.steps=3", "model.name=big", "train.betas=[0.5, 0.9]"])
    assert r.seed == 3 and r.train.lr == 0.001 and r.model.width == 16
    assert r.train.steps == 3 and r.model.name == "big" and r.train.betas == [0.5, 0.9]
    with pytest.raises(PrestoError, match="train.stepz"):
        load_recipe(tmp_path / "r.yaml", ["train.stepz=3"])
    with pytest.raises(PrestoError, match="key=value"):
        load_recipe(tmp_path / "r.yaml", ["train.steps"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(PrestoError, match="not found"):
        read_yaml_with_base(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("stage: [unclosed\n")
    with pytest.raises(PrestoError, match="not valid YAML"):
        read_yaml_with_base(tmp_path / "bad.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(PrestoError, match="includes itself"):
        read_yaml_with_base(tmp_path / "loop.yaml")


def test_unknown_stage(tmp_path):
    (tmp_path / "r.yaml").write_text("stage: techer\n")
    with pytest.raises(PrestoError, match="unknown stage"):
        load_recipe(tmp_path / "r.yaml")


def test_overrides_create_nested():
    d = apply_overrides({"a": {"b": 1}}, ["a.c.d=2", "e=hello"])
    assert d == {"a": {"b": 1, "c": {"d": 2}}, "e": "hello"}


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_recipe_loads(path):
    """Each recipe under recipes/ (the demo chain's phases included) resolves its base chain and
    passes validation: an unknown key, a wrong type or a missing base fails here, not hours into a
    `make demo-models` run."""
    r = load_recipe(str(path))
    assert r.stage and r.name
