"""Typed YAML recipes.

A recipe is a YAML file mapped onto nested dataclasses. Unknown keys are refused with the nearest
valid key suggested, wrong types are refused naming the key, ``base:`` includes another recipe
(deep-merged underneath), and ``a.b.c=value`` overrides come from the command line.

Every stage registers its recipe class with :func:`register_stage`; :func:`load_recipe` reads the
``stage`` key and validates the whole file against that class.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from presto_cli.errors import PrestoError
from presto_cli.validate import describe, read_utf8

# --------------------------------------------------------------------------------------------
# Shared sections


@dataclass
class DataConfig:
    """Where training data comes from."""

    path: str = ""  # folder of audio with a manifest (see `presto data prepare`)
    manifest: str = ""  # manifest file; default <path>/manifest.jsonl
    sample_rate: int = 16000
    clip_seconds: float = 4.0
    latents: str = ""  # latent cache folder; default <run>/../latents or <path>/.presto-latents
    codec: str = ""  # codec artefact used to encode audio to latents (teacher and later stages)
    teacher: str = ""  # teacher artefact (distillation stages)
    num_workers: int = 0
    val_fraction: float = 0.0  # held-out fraction (deterministic by file name hash)


@dataclass
class TrainConfig:
    """The shared training loop's settings."""

    steps: int = 1000
    batch_size: int = 16  # global batch: split across ranks under torchrun
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup: int = 0  # linear LR warm-up steps
    grad_clip: float = 1.0  # 0 disables
    ema: float = 0.999  # EMA decay of the exported weights; 0 disables
    log_every: int = 10
    ckpt_every: int = 500
    keep_ckpts: int = 3
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA
    device: str = "auto"
    compile: bool = False


@dataclass
class BaseRecipe:
    stage: str = ""
    seed: int = 0
    name: str = ""  # free-form run name, goes into the artefact metadata
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------------------------
# Stage registry

_STAGES: dict[str, type] = {}


def register_stage(name: str):
    """Class decorator: ``@register_stage("teacher")`` on a dataclass subclassing BaseRecipe."""

    def deco(cls):
        if not (dataclasses.is_dataclass(cls) and issubclass(cls, BaseRecipe)):
            raise TypeError(f"{cls} must be a dataclass subclassing BaseRecipe")
        _STAGES[name] = cls
        return cls

    return deco


def stage_names() -> list[str]:
    _import_stage_modules()
    return sorted(_STAGES)


def recipe_class(stage: str) -> type:
    _import_stage_modules()
    if stage not in _STAGES:
        raise PrestoError(
            f"unknown stage '{stage}'{_suggest(stage, _STAGES)}",
            f"valid stages: {', '.join(sorted(_STAGES))}",
        )
    return _STAGES[stage]


# The stage modules (presto_cli/stages/), imported by name: the recipes know the stages, they do
# not depend on them (tests/test_imports.py keeps the package graph acyclic).
STAGE_MODULES = (
    "presto_cli.stages.autoencoder",  # autoencoder (presto pretrain)
    "presto_cli.stages.teacher",  # teacher (presto pretrain)
    "presto_cli.stages.presto_s",  # presto-s (presto distill-steps)
    "presto_cli.stages.layers",  # ase, presto-l (presto distill-layers)
    "presto_cli.stages.combine",  # presto-ls (presto combine)
    "presto_cli.stages.clap",  # clap (presto pretrain): the in-domain evaluation model
    "presto_cli.stages.text_adapter",  # text-adapter (presto pretrain): prompts in a person's words
)


def _import_stage_modules() -> None:
    """Import the modules that register stages (lazily: keeps `presto --help` fast)."""
    import importlib

    for mod in STAGE_MODULES:
        importlib.import_module(mod)


# --------------------------------------------------------------------------------------------
# Validation


def _suggest(key: str, valid) -> str:
    m = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1, cutoff=0.5)
    return f"; did you mean '{m[0]}'?" if m else ""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errs = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except PrestoError as e:
                errs.append(e)
        raise PrestoError(f"recipe key '{where}' has the wrong type: got {describe(value)}",
                          f"expected {' or '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        if value not in args:
            raise PrestoError(f"recipe key '{where}' must be one of {list(args)}, got {describe(value)}"
                              f"{_suggest(value, args) if isinstance(value, str) else ''}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise PrestoError(f"recipe key '{where}' must be a mapping, got {describe(value)}")
        return dataclass_from_dict(tp, value, where)
    if origin in (list, tuple):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise PrestoError(f"recipe key '{where}' must be a list, got {describe(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise PrestoError(f"recipe key '{where}' must have {len(args)} items, got {len(value)}")
            return [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise PrestoError(f"recipe key '{where}' must be a mapping, got {describe(value)}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise PrestoError(f"recipe key '{where}' must be true or false, got {describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise PrestoError(f"recipe key '{where}' must be an integer, got {describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise PrestoError(f"recipe key '{where}' must be a number, got {describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise PrestoError(f"recipe key '{where}' must be a string, got {describe(value)}")
    return value


def dataclass_from_dict(cls, data: dict | None, where: str = ""):
    """Build dataclass ``cls`` from ``data``: refuse unknown keys and wrong types, naming them."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise PrestoError(f"unknown recipe key '{full}'{_suggest(key, fields)}",
                              f"valid keys here: {', '.join(fields)}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def recipe_to_dict(obj) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: recipe_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [recipe_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: recipe_to_dict(v) for k, v in obj.items()}
    return obj


def dump_recipe(obj) -> str:
    return yaml.safe_dump(recipe_to_dict(obj), sort_keys=False, default_flow_style=None)


# --------------------------------------------------------------------------------------------
# Loading


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


MAX_YAML_NODES = 100_000  # nodes after alias expansion: recipes have hundreds


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents whose aliases expand past ``MAX_YAML_NODES`` nodes (a
    "billion laughs" alias bomb would otherwise hang every later walk over the data)."""

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, {}, set(), self.name)
        return node


def _no_duplicate_keys(node, name: str) -> None:
    """YAML keeps the last of two equal keys without a word: refuse them, naming key and lines."""
    first: dict = {}
    for k, _ in node.value:
        if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
            continue
        if k.value in first:
            raise PrestoError(f"{name}: key '{k.value}' appears twice (lines {first[k.value]} and "
                              f"{k.start_mark.line + 1})", "keep one of them; YAML would silently use the last")
        first[k.value] = k.start_mark.line + 1


def _expanded_size(node, memo: dict, open_: set, name: str) -> int:
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_:
        raise PrestoError(f"{name} has a YAML alias that refers to itself", "remove the recursive alias")
    open_.add(key)
    if isinstance(node, yaml.SequenceNode):
        n = 1 + sum(_expanded_size(c, memo, open_, name) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        _no_duplicate_keys(node, name)
        n = 1 + sum(_expanded_size(k, memo, open_, name) + _expanded_size(v, memo, open_, name)
                    for k, v in node.value)
    else:
        n = 1
    open_.discard(key)
    if n > MAX_YAML_NODES:
        raise PrestoError(f"{name} expands to more than {MAX_YAML_NODES} values through its aliases",
                          "write the values out instead of nesting aliases")
    memo[key] = n
    return n


def load_yaml(text: str, name: str = "<text>"):
    """``yaml.safe_load`` with alias expansion bounded (see :class:`_BoundedLoader`)."""
    loader = _BoundedLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml_with_base(path: str | Path, _seen: tuple = (), what: str = "recipe") -> dict:
    """A YAML mapping with its ``base:`` files deep-merged underneath (recipes, and `presto eval
    --config` files with ``what="eval config"``); one clear line for a missing or bad file."""
    path = Path(path)
    if not path.is_file():
        hint = "check the path; recipes live in recipes/" if what == "recipe" else "check the path"
        raise PrestoError(f"{what} file not found: {path}", hint)
    if path.resolve() in _seen:
        raise PrestoError(f"{what} {path} includes itself through 'base:'")
    try:
        data = load_yaml(read_utf8(path, what), str(path)) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise PrestoError(f"{what} {path} is not valid YAML{at}", "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise PrestoError(f"{what} {path} must be a mapping of keys to values")
    base = data.pop("base", None)
    if base:
        bases = base if isinstance(base, list) else [base]
        merged: dict = {}
        for b in bases:
            merged = _deep_merge(merged, read_yaml_with_base(path.parent / b, _seen + (path.resolve(),), what))
        data = _deep_merge(merged, data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise PrestoError(f"override '{text}' is not of the form key=value", "for example train.steps=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise PrestoError(f"override '{text}' has an empty key", "for example train.steps=3")
    try:
        value = load_yaml(raw, f"override {key}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    for ov in overrides or []:
        parts, value = parse_override(ov)
        node = data
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {} if node.get(p) is None else node[p]
                if not isinstance(node[p], dict):
                    raise PrestoError(f"override '{ov}': '{p}' is not a section")
            node = node[p]
        node[parts[-1]] = value
    return data


def recipe_from_dict(data: dict):
    stage = data.get("stage")
    if not stage:
        raise PrestoError("recipe has no 'stage' key", f"add one of: {', '.join(stage_names())}")
    cls = recipe_class(str(stage))
    return dataclass_from_dict(cls, data)


def load_recipe(path: str | Path, overrides: list[str] | None = None):
    """Read, merge bases, apply overrides and validate a recipe file."""
    data = apply_overrides(read_yaml_with_base(path), overrides or [])
    recipe = recipe_from_dict(data)
    check_common(recipe)
    validate = getattr(recipe, "validate", None)
    if callable(validate):
        validate()
    return recipe


# --------------------------------------------------------------------------------------------
# Ranges every recipe shares (checked before any run directory or model exists)


def _walk_numbers(obj, where: str = ""):
    """(dotted key, value) of every number in a recipe dataclass tree."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _walk_numbers(getattr(obj, f.name), f"{where}.{f.name}" if where else f.name)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk_numbers(v, f"{where}[{i}]")
    elif isinstance(obj, float):
        yield where, obj


MAX_TRAIN_STEPS = 10**9  # at 1 ms a step, 11 days: a larger count is a typo (or 1e30)

_TRAIN_RANGES = {  # key: (lowest allowed, lowest excluded?) ... upper bounds below
    "train.lr": (0.0, True), "train.batch_size": (1, False), "train.steps": (0, False),
    "train.warmup": (0, False), "train.grad_clip": (0.0, False), "train.weight_decay": (0.0, False),
    "train.ema": (0.0, False), "train.keep_ckpts": (1, False), "data.clip_seconds": (0.0, True),
    "data.sample_rate": (1, False), "data.val_fraction": (0.0, False), "data.num_workers": (0, False),
}


def check_common(recipe) -> None:
    """Finite numbers everywhere, positive learning rates, and the shared sections' ranges."""
    for key, v in _walk_numbers(recipe):
        if not math.isfinite(v):
            raise PrestoError(f"recipe key '{key}' must be a finite number, got {v}", "give an ordinary number")
        leaf = key.rsplit(".", 1)[-1]
        if (leaf == "lr" or leaf.startswith("lr_") or leaf.endswith("_lr")) and v < 0:
            raise PrestoError(f"recipe key '{key}' must not be negative, got {v:g}", "a learning rate such as 1e-4")
    for key, (low, strict) in _TRAIN_RANGES.items():
        sec, leaf = key.split(".")
        v = getattr(getattr(recipe, sec), leaf)
        if v < low or (strict and v == low):
            raise PrestoError(f"recipe key '{key}' must be {'greater than' if strict else 'at least'} {low:g}, "
                              f"got {v:g}", "a learning rate such as 1e-4" if leaf == "lr" else None)
    if recipe.train.steps > MAX_TRAIN_STEPS:
        raise PrestoError(f"recipe key 'train.steps' is {recipe.train.steps:.3g}, more than the "
                          f"{MAX_TRAIN_STEPS:.0e} steps any run could finish",
                          "give the number of optimiser steps you mean to run, e.g. train.steps=20000")
    for key, v in (("train.ema", recipe.train.ema), ("data.val_fraction", recipe.data.val_fraction)):
        if v >= 1:
            raise PrestoError(f"recipe key '{key}' must be below 1, got {v:g}")
    if any(not 0 <= b < 1 for b in recipe.train.betas) or len(recipe.train.betas) != 2:
        raise PrestoError("recipe key 'train.betas' must be two numbers in [0, 1)",
                          "the usual AdamW betas are [0.9, 0.999]")
