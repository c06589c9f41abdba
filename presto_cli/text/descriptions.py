"""Plain-language descriptions of a clip's music, for training the text adapter (METHOD.md section 2,
"Prompts as written").

A description table (JSON) holds, per group (for the synthetic corpus: per style), ``sentences``
(whole descriptions) and the parts ``scenes``, ``sounds`` and ``feels``; ``moods`` maps a mood label
to everyday words for it. :func:`compose` turns a clip's group, mood and a few uniform numbers into
one description: a whole sentence, or parts joined by one of :data:`FORMS`. The bundled table,
``assets/lay_descriptions.json``, was written for this purpose by a language model from the
corpus's style list (what each style's clips hold) without seeing either paraphrase evaluation set.
"""
from __future__ import annotations

import json
from pathlib import Path

from presto_cli.errors import PrestoError

__all__ = ["DescriptionTable", "FORMS", "DEFAULT_TABLE"]

DEFAULT_TABLE = Path(__file__).resolve().parents[1] / "assets" / "lay_descriptions.json"
PARTS = ("sentences", "scenes", "sounds", "feels")

# joins of the parts: {scene} {sound} {feel} {mood}
FORMS = (
    "{feel} music for {scene}",
    "{sound}, {feel}",
    "something {feel} with {sound}",
    "music for {scene}, {feel} and {mood}",
    "{scene}. {sound}",
    "{mood} and {feel}, with {sound}",
    "the sound of {scene}",
    "i want {sound}, {mood}",
    "{feel}, {mood}, like {scene}",
    "{sound} for {scene}",
    "a {mood} piece with {sound}",
    "play me something for {scene}",
)


class DescriptionTable:
    def __init__(self, table: dict, source: str = ""):
        styles = table.get("styles") if isinstance(table, dict) else None
        if not isinstance(styles, dict) or not styles:
            raise PrestoError(f"{source or 'the description table'} has no 'styles' map",
                              'write {"styles": {"<group>": {"sentences": [...], ...}}, "moods": {...}}')
        self.groups: dict[str, dict[str, list[str]]] = {}
        for g, entry in styles.items():
            parts = {p: [str(s).strip() for s in entry.get(p, []) if str(s).strip()] for p in PARTS}
            if not parts["sentences"] and not all(parts[p] for p in ("scenes", "sounds", "feels")):
                raise PrestoError(f"{source}: group '{g}' has neither sentences nor all of scenes, sounds, feels",
                                  "give each group sentences, or scenes, sounds and feels")
            self.groups[str(g)] = parts
        self.moods = {str(k): [str(s) for s in v if str(s).strip()] for k, v in (table.get("moods") or {}).items()}
        self.source = source

    @classmethod
    def load(cls, path: str | Path | None = None) -> "DescriptionTable":
        p = Path(path) if path else DEFAULT_TABLE
        if not p.is_file():
            raise PrestoError(f"description table not found: {p}", "give adapter.descriptions=FILE.json")
        try:
            table = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise PrestoError(f"{p} is not valid JSON (line {e.lineno})", "fix the file") from None
        return cls(table, str(p))

    def __contains__(self, group: str) -> bool:
        return group in self.groups

    def compose(self, group: str, mood: str | None, u: list[float]) -> str:
        """One description of ``group`` from six uniform numbers in [0, 1): ``u[0]`` picks a whole
        sentence (below 0.4, when the group has sentences) or a form of parts, the rest pick the
        parts (the mood from ``moods[mood]``, else a feel)."""
        e = self.groups[group]

        def pick(items: list[str], x: float) -> str:
            return items[min(int(x * len(items)), len(items) - 1)]

        has_parts = all(e[p] for p in ("scenes", "sounds", "feels"))
        if e["sentences"] and (u[0] < 0.4 or not has_parts):
            return pick(e["sentences"], u[1])
        mood_words = self.moods.get(mood or "", []) or e["feels"]
        text = pick(FORMS, u[1]).format(scene=pick(e["scenes"], u[2]), sound=pick(e["sounds"], u[3]),
                                        feel=pick(e["feels"], u[4]), mood=pick(mood_words, u[5]))
        return text[0].upper() + text[1:] if u[5] < 0.5 else text
