"""Write the texture reference of real latents (presto_cli/assets/ref_heldout_texture.json), which
`presto eval --metrics texture` compares every model's latents against (METHOD.md section 6).

The held-out split of a synthetic corpus, encoded by the codec (for the mel codec the encoder is a
fixed transform, so these are exactly the latents a model should draw):
    presto data synth --out data/synth --n 960 --seconds 4 --seed 0 --split-heldout 0.1
    python benchmarks/texture_ref.py --data data/synth --codec presto_cli/assets/demo-codec.safetensors
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="synthetic corpus folder (manifest.jsonl)")
    ap.add_argument("--codec", default=str(ROOT / "presto_cli/assets/demo-codec.safetensors"))
    ap.add_argument("--split", default="heldout", help="manifest split to use (heldout | train | all)")
    ap.add_argument("--n", type=int, default=96, help="clips (at most)")
    ap.add_argument("--patch", type=int, default=4, help="token size of the models compared (frames)")
    ap.add_argument("--out", default=str(ROOT / "presto_cli/assets/ref_heldout_texture.json"))
    a = ap.parse_args(argv)

    import torch

    from presto_cli.codec import load_codec
    from presto_cli.data.latents import file_sha256
    from presto_cli.eval.evaluate import _audio_latents_db
    from presto_cli.eval.texture import set_texture
    from presto_cli.io import atomic_write_json

    torch.set_num_threads(1)
    data = Path(a.data)
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines() if line.strip()]
    if a.split != "all":
        rows = [r for r in rows if r.get("split") == a.split]
    rows = rows[: a.n]
    if len(rows) < 2:
        raise SystemExit(f"only {len(rows)} clips of split {a.split!r} in {data}")
    codec = load_codec(a.codec, "cpu").eval()
    dbs = _audio_latents_db([data / r["path"] for r in rows], codec)
    ref = set_texture(dbs, patch=a.patch)
    ref.update(codec_sha256=file_sha256(a.codec), codec_file=Path(a.codec).name,
               data=f"{data.name}: {len(rows)} clips of split {a.split}",
               made_by="benchmarks/texture_ref.py")
    atomic_write_json(a.out, ref)
    print(json.dumps(ref, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
