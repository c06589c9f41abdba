"""How often nearest-caption matching (METHOD.md section 2) retrieves a caption of the prompt's style.

For each prompt of a labelled prompt file (``style`` per row) the model's caption bank is searched
with one or more retrieval rules; a retrieval is right when the retrieved training caption belongs to
a clip of the prompt's style (looked up in the corpus manifest). No audio is generated: this isolates
the retrieval from the generator, so a rule can be compared without a model run.

Rules: ``nearest`` (the shipped rule: highest cosine), ``cslsK`` (cross-domain similarity local
scaling, Conneau et al. 2018: ``2 cos(q, c) - r_q - r_c`` with ``r`` the mean cosine to the K nearest
of the other side; it discounts "hub" captions near everything).

Choose a rule on the development set (benchmarks/paraphrase_dev.jsonl, written for this and never
reported) and only then read the reported set (presto_cli/assets/paraphrase_prompts.jsonl):

    python benchmarks/retrieval.py --model demo-s --manifest data/synth/manifest.jsonl \\
        --prompts benchmarks/paraphrase_dev.jsonl --prompts presto_cli/assets/paraphrase_prompts.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from presto_cli.pipeline import load_pipeline  # noqa: E402
from presto_cli.prompts import read_prompts  # noqa: E402


def rule_scores(q: torch.Tensor, bank: torch.Tensor, rule: str) -> torch.Tensor:
    """[Q, C] scores whose row argmax is the retrieved caption; q and bank rows are unit vectors."""
    sim = q @ bank.T
    if rule == "nearest":
        return sim
    if rule.startswith("csls"):
        k = int(rule[4:])
        r_q = sim.topk(k, dim=1).values.mean(1, keepdim=True)
        bb = bank @ bank.T - 2 * torch.eye(len(bank))  # a caption is not its own neighbour
        r_c = bb.topk(k, dim=1).values.mean(1)[None]
        return 2 * sim - r_q - r_c
    raise SystemExit(f"unknown rule {rule!r}: nearest or cslsK (e.g. csls10)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo-s", help="model carrying a caption bank")
    ap.add_argument("--manifest", required=True, help="the corpus manifest.jsonl (caption -> style)")
    ap.add_argument("--prompts", action="append", required=True, help="labelled .jsonl (repeatable)")
    ap.add_argument("--rules", default="nearest,csls5,csls10,csls20")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    a = ap.parse_args()

    pipe = load_pipeline(a.model, "cpu")
    if pipe.bank is None:
        raise SystemExit(f"{a.model} carries no caption bank")
    style_of = {}
    for line in Path(a.manifest).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            style_of[row["caption"]] = row["labels"]["style"]
    bstyle = [style_of.get(c) for c in pipe.bank.captions]
    unknown = sum(s is None for s in bstyle)
    bank = torch.nn.functional.normalize(pipe.bank.pooled.float(), dim=-1)
    out = {"model": a.model, "bank": len(bstyle), "bank_unlabelled": unknown,
           "threshold": pipe.bank.threshold, "sets": {}}
    for path in a.prompts:
        rows = [r for r in read_prompts(path) if r.get("style")]
        with torch.no_grad():
            q = torch.nn.functional.normalize(pipe.text([r["prompt"] for r in rows])[2].float(), dim=-1)
        below = int(((q @ bank.T).max(1).values < pipe.bank.threshold).sum())
        res = {"n": len(rows), "below_threshold": below}
        for rule in a.rules.split(","):
            idx = rule_scores(q, bank, rule.strip()).argmax(1).tolist()
            res[rule.strip()] = round(100 * sum(bstyle[i] == r["style"] for i, r in zip(idx, rows)) / len(rows), 1)
        out["sets"][str(path)] = res
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{a.model}: {len(bstyle)} captions ({unknown} not in the manifest), threshold {pipe.bank.threshold}")
    for path, res in out["sets"].items():
        rules = "  ".join(f"{k} {v:.1f}%" for k, v in res.items() if k not in ("n", "below_threshold"))
        print(f"{path}: {res['n']} prompts, {res['below_threshold']} below the threshold; style right: {rules}")


if __name__ == "__main__":
    main()
