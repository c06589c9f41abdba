"""Captions for the demo's regression trajectories (``distill.reg_prompts``): fresh training-form
wordings of the synthetic corpus's own labels.

The corpus has one caption per clip, so 384 trajectories made from training captions see 384
wordings, each 40 times over 2000 updates; the 4-step models then followed the held-out prompts 20
points better than plain-language ones (README, "Prompt adherence in a person's words"). These
captions say the training clips' labels again with new draws of :func:`train_caption` (its short
queries, tag lists, everyday phrases and long sentences): the training vocabulary only, never the
held-out templates or the paraphrase prompts.

    python benchmarks/reg_captions.py --corpus data/synth --n 1024 --out recipes/demo/reg_captions.txt
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from presto_cli.data.synth.captions import train_caption  # noqa: E402
from presto_cli.io import atomic_write_text  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, required=True, help="a `presto data synth` folder")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    rows = [json.loads(l) for l in (a.corpus / "manifest.jsonl").read_text().splitlines() if l.strip()]
    rows = [r for r in rows if r.get("split", "train") == "train"]
    rng = np.random.default_rng(a.seed)
    seen = {r["caption"] for r in rows}
    out: list[str] = []
    while len(out) < a.n:
        text = train_caption(rows[int(rng.integers(len(rows)))]["labels"], rng)
        if text not in seen:  # a wording the corpus does not already have
            seen.add(text)
            out.append(text)
    head = (f"# {a.n} training-form captions of {a.corpus.name}'s train-split labels "
            f"(benchmarks/reg_captions.py --n {a.n} --seed {a.seed})\n")
    atomic_write_text(a.out, head + "\n".join(out) + "\n")
    print(f"wrote {len(out)} captions to {a.out}")


if __name__ == "__main__":
    main()
