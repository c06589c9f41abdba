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
    as_json = path.suffix.lower() in (".jsonl", ".json")
    for i, line in enumerate(read_utf8(path, "prompt file").splitlines(), 1):
        row = parse_prompt_line(line, f"{path}:{i}", as_json)
        if row is not None:
            rows.append(row)
    if not rows:
        raise PrestoError(f"prompt file {path} has no prompts")
    return rows


def parse_prompt_line(line: str, where: str, as_json: bool) -> dict | None:
    """One line of a prompt file as a row (None for blank lines and # comments): plain text, or
    with ``as_json`` a ``{"prompt", "seed"?, "name"?, "style"?}`` object."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    if not as_json:
        return {"prompt": check_prompt(line, f"the prompt at {where}")}
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        raise PrestoError(f"{where} is not valid JSON", "one JSON object per line") from None
    if not isinstance(rec, dict) or not str(rec.get("prompt", "")).strip():
        raise PrestoError(f"{where} has no \"prompt\"")
    if "seed" in rec and not isinstance(rec["seed"], int):
        raise PrestoError(f"{where}: \"seed\" must be an integer")
    check_prompt(str(rec["prompt"]), f"the prompt at {where}")
    return {k: rec[k] for k in ("prompt", "seed", "name", "style") if k in rec}


def stream_prompts(lines, where: str = "stdin"):
    """Rows from an iterable of lines as they arrive (``--prompts -``): a line that starts with
    ``{`` is a JSON row, any other non-blank line a plain prompt."""
    for i, line in enumerate(lines, 1):
        row = parse_prompt_line(line, f"{where}:{i}", line.lstrip().startswith("{"))
        if row is not None:
            yield row
