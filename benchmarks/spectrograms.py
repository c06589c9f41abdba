"""One picture for the README: log-mel spectrograms of a real clip and of each bundled model's output
for the same prompt and seed, plus the chroma change (how much the notes move) under each.

    python benchmarks/spectrograms.py [--prompt "..."] [--seed 0] [--real CLIP.wav] [--out docs/spectrograms.png]

A drone draws steady horizontal lines and scores a chroma change near 0.03; music draws notes that
start and stop (the synthetic corpus scores about 0.33). `make results` runs this.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("demo-teacher", "demo-s", "demo-ase", "demo-l", "demo-ls")


def real_clip(folder: Path, style: str, sr: int, seconds: float) -> np.ndarray | None:
    """The first clip of ``style`` in a synthetic corpus folder (its manifest's labels), or None."""
    from presto_cli.audio import load_audio

    manifest = folder / "manifest.jsonl"
    if not manifest.is_file():
        return None
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        if (row.get("labels") or {}).get("style") == style:
            x = load_audio(folder / row["path"], sr)[0].numpy()
            return x[:int(seconds * sr)]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # a BPM and key inside the style's range: the bundled models take them as conditions
    ap.add_argument("--prompt", default="A jazz trio with swinging ride cymbal, walking upright bass and piano, at 132 BPM in F major.")
    ap.add_argument("--style", default="jazz_trio", help="style of the real clip shown beside the outputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real", type=Path, default=ROOT / "data" / "synth-heldout",
                    help="a synthetic corpus folder (a clip of --style is shown) or one audio file")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "spectrograms.png")
    a = ap.parse_args()

    from presto_cli.audio import load_audio
    from presto_cli.codec.quality import spectrogram_grid, tonal_change
    from presto_cli.pipeline import load_pipeline

    panels: list[tuple[str, np.ndarray, int]] = []
    for name in a.models:
        pipe = load_pipeline(name, a.device)
        x = pipe.generate([a.prompt], [a.seed])[0, 0].float().cpu().numpy()
        panels.append((name, x, pipe.sample_rate))
    sr, seconds = panels[0][2], len(panels[0][1]) / panels[0][2]
    real = (load_audio(a.real, sr)[0].numpy() if a.real.is_file()
            else real_clip(a.real, a.style, sr, seconds))
    if real is not None:
        panels.insert(0, (f"real {a.style} clip", real, sr))
    else:  # the README's picture must show one: say so rather than drop it silently
        import sys
        print(f"warning: no real {a.style} clip in {a.real} (python benchmarks/bundle.py writes "
              "<data>-heldout/, or give --real CLIP.wav); the picture has the models only", file=sys.stderr)
    titled = [(f"{name}: chroma change {tonal_change(x, s):.3f}", x, s) for name, x, s in panels]
    spectrogram_grid(a.out, titled, f'"{a.prompt}", seed {a.seed}')
    for title, _, _ in titled:
        print(title)
    print(a.out)


if __name__ == "__main__":
    main()
