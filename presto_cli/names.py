"""Names the user types (bundled models, embedders) checked without importing torch, so that a
misspelt name or a missing file is refused at once, with a "did you mean" where one is close."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Iterable

from presto_cli.errors import PrestoError, PrestoUsageError

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_CAPTIONS = "demo-captions.safetensors"  # the caption bank every bundled model was trained on
BUNDLED_RANGE = "demo-latent-range.safetensors"  # the latent range of the training split they were trained on
BUNDLED = {  # bundled name -> file in presto_cli/assets (presto_cli.pipeline re-exports it)
    "demo-teacher": "demo-teacher.safetensors",
    "demo-s": "demo-s.safetensors",
    "demo-ase": "demo-ase.safetensors",
    "demo-l": "demo-l.safetensors",
    "demo-ls": "demo-ls.safetensors",
}


def is_bundled_file(path, assets: Path | None = None) -> bool:
    """Whether ``path`` (a symlink to one included) is one of the bundled models' files in
    ``assets`` (default: the package's), which share one caption bank and one latent range
    (benchmarks/bundle.py stores each once)."""
    if path is None:
        return False
    try:
        p, a = Path(path).resolve(), Path(assets or ASSETS).resolve()
    except OSError:
        return False
    return p.parent == a and p.name in BUNDLED.values()


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``word`` (difflib ratio at least 0.6), or None."""
    close = difflib.get_close_matches(str(word).strip().lower(), list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_name(what: str, word: str, choices: Iterable[str], also: str = "") -> PrestoUsageError:
    """``unknown <what> 'word' (did you mean 'x'? known: a, b, c<also>)``: a usage error (exit 2)."""
    choices = list(choices)
    near = did_you_mean(word, choices)
    hint = (f"did you mean '{near}'? " if near else "") + f"known: {', '.join(choices)}{also}"
    return PrestoUsageError(f"unknown {what} '{word}'", hint)


def looks_like_path(name: str) -> bool:
    return name.endswith(".safetensors") or "/" in name or "\\" in name or name.startswith(".")


def check_model_arg(name_or_path: str | None) -> None:
    """Refuse a --model that is neither a bundled name nor an existing file or run folder: a path
    that does not exist is "model file not found" (exit 1), anything else an unknown name (exit 2)."""
    if not name_or_path or name_or_path in BUNDLED:
        return
    p = Path(name_or_path)
    if p.is_file() or (p.is_dir() and (p / "model.safetensors").is_file()):
        return
    if p.is_dir():
        raise PrestoError(f"{p} is a folder without a model.safetensors",
                          "give the artefact's path, or export one with `presto export RUN -o FILE`")
    if looks_like_path(name_or_path):
        raise PrestoError(f"model file not found: {p}", "check the path")
    raise unknown_name("model", name_or_path, BUNDLED, ", or a .safetensors path")
