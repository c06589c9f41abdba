"""`presto data synth` and `presto data prepare` (mounted by cli.py as the `data` sub-app).

Heavy modules (numpy, torch, pedalboard, pretty_midi) are imported inside the commands so that
`presto --help` stays fast.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Data: synthesise, prepare and encode datasets.", no_args_is_help=True,
                  add_completion=False, rich_markup_mode=None)


@app.command("synth")
def synth_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (audio/, manifest.jsonl, styles.json)."),
    n: int = typer.Option(1000, "--n", help="Number of clips."),
    seconds: float = typer.Option(10.0, "--seconds", help="Length of each clip in seconds."),
    seed: int = typer.Option(0, "--seed", help="Corpus seed: same seed, same bytes."),
    sample_rate: int = typer.Option(16000, "--sample-rate", help="Sample rate of the wav files."),
    workers: int = typer.Option(0, "--workers", "-j", help="Parallel render processes (0: one per CPU)."),
    split_heldout: float = typer.Option(0.0, "--split-heldout",
                                        help="Fraction of clips whose prompts (moods, wordings) training never sees."),
    soundfont: Optional[Path] = typer.Option(None, "--soundfont", help="General MIDI .sf2 (default FluidR3_GM)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary to stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or progress lines on stderr."),
):
    """Render a synthetic text-to-music corpus: 14 styles of procedural MIDI via FluidSynth."""
    from presto_cli.data.synth import synth_corpus
    from presto_cli.runtime import console, progress, progress_every, set_quiet

    set_quiet(quiet)
    progress_every()  # a bad PRESTO_PROGRESS_EVERY fails before any work

    w = workers if workers > 0 else max(1, os.cpu_count() or 1)
    with progress("synth", quiet=as_json) as cb:
        info = synth_corpus(out, n=n, seconds=seconds, seed=seed, sample_rate=sample_rate, workers=w,
                            heldout=split_heldout, soundfont=soundfont, progress=cb)
    if as_json:
        typer.echo(json.dumps(info))
    else:
        console.print(f"wrote {info['n']} clips x {info['seconds']:g} s ({info['heldout']} held out) "
                      f"in {info['elapsed_s']:.1f} s ({info['clips_per_s']:.2f} clips/s, "
                      f"{info['workers']} workers)", highlight=False)
        typer.echo(str(Path(out) / "manifest.jsonl"))


@app.command("prepare")
def prepare_cmd(
    data_dir: Path = typer.Argument(..., help="Folder of audio files (wav/flac/mp3/ogg/opus/aiff)."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="Manifest to write (default DIR/manifest.jsonl)."),
    captions: Optional[Path] = typer.Option(None, "--captions",
                                            help="Captions file (jsonl or csv with path,caption); default: "
                                                 "DIR/manifest.jsonl|csv if present, then sidecar .txt/.json."),
    min_seconds: float = typer.Option(0.5, "--min-seconds", help="Skip files shorter than this."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary to stdout."),
):
    """Validate a folder dataset and write its manifest (bad files are named and skipped)."""
    from presto_cli.data.folder import prepare_folder
    from presto_cli.errors import PrestoError
    from presto_cli.runtime import console, progress

    with progress("checking", quiet=as_json) as cb:
        info = prepare_folder(data_dir, manifest_out=manifest, captions=captions, min_seconds=min_seconds,
                              progress=cb)
    for w in info["warnings"]:
        console.print(f"warning: {w}", markup=False, highlight=False, soft_wrap=True)
    for p in info["problems"]:
        console.print(f"[yellow]skipped[/yellow] {p['path']}: {p['reason']}", highlight=False)
    if as_json:
        typer.echo(json.dumps(info))
    else:
        c = info["captions"]
        console.print(f"kept {info['kept']} files ({info['hours'] * 60:.1f} min), skipped {info['skipped']}; "
                      f"captions: {c['manifest']} from manifest, {c['sidecar']} from sidecars, "
                      f"{c['filename']} from file names", highlight=False)
        if info["manifest"]:
            typer.echo(info["manifest"])
    if info["kept"] == 0:
        from presto_cli.audio import AUDIO_EXTS
        from presto_cli.data.folder import why_nothing_usable

        raise PrestoError(f"no usable audio files in {data_dir}: {why_nothing_usable(data_dir, info['problems'])}",
                          "supported: " + ", ".join(e.lstrip(".") for e in AUDIO_EXTS))
