"""Prompt files, shared by `presto generate` and `presto eval`."""
from __future__ import annotations

import json
from pathlib import Path

from presto_cli.errors import PrestoError
from presto_cli.validate import check_prompt, read_utf8


def read_prompts(path: str | Path) -> list[dict]:
    """txt: one prompt per line; jsonl: ``{"prompt", "seed"?, "name"?, "style"?}`` per line."""
    path = Path(path)
    if not path.is_file():
        raise PrestoError(f"prompt file not found: {path}")
    rows: list[dict] = []
    for i, line in enumerate(read_utf8(path, "prompt file").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if path.suffix.lower() in (".jsonl", ".json"):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise PrestoError(f"{path}:{i} is not valid JSON", "one JSON object per line") from None
            if not isinstance(rec, dict) or not str(rec.get("prompt", "")).strip():
                raise PrestoError(f"{path}:{i} has no \"prompt\"")
            if "seed" in rec and not isinstance(rec["seed"], int):
                raise PrestoError(f"{path}:{i}: \"seed\" must be an integer")
            rows.append({k: rec[k] for k in ("prompt", "seed", "name", "style") if k in rec})
        else:
            rows.append({"prompt": line})
        check_prompt(str(rows[-1]["prompt"]), f"the prompt at {path}:{i}")
    if not rows:
        raise PrestoError(f"prompt file {path} has no prompts")
    return rows
