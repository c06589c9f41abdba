"""The `presto` command line: thin wrappers over the core library.

Data goes to stdout, logs and progress to stderr. Known errors print one line and exit 1 (usage
errors exit 2); a traceback only with ``--debug`` (or PRESTO_DEBUG=1).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import click
import typer
from typer.core import TyperGroup

from presto_cli import __version__
from presto_cli.errors import Interrupted, PrestoError, interrupt_code, known_os_error, silence_stdout

def _click_flow_exceptions() -> tuple:
    """Exceptions that are click's own control flow (usage errors, --help's exit, aborts): typer
    0.29 vendors click as typer._click, so both families are passed through."""
    out = [SystemExit, typer.Exit, click.exceptions.Exit, click.exceptions.Abort, click.ClickException]
    try:
        from typer._click import exceptions as tcx

        out += [getattr(tcx, n) for n in ("Exit", "Abort", "ClickException", "TyperException")
                if isinstance(getattr(tcx, n, None), type)]
    except ImportError:
        pass
    try:
        import typer.exceptions as tex

        out += [getattr(tex, n) for n in ("Exit", "Abort") if isinstance(getattr(tex, n, None), type)]
    except ImportError:
        pass
    return tuple(dict.fromkeys(out))


_PASS_THROUGH = _click_flow_exceptions()
_DEBUG = {"on": os.environ.get("PRESTO_DEBUG", "") not in ("", "0")}


def _err(line: str) -> None:
    sys.stderr.write(line.rstrip() + "\n")
    sys.stderr.flush()


class PrestoGroup(TyperGroup):
    """Turns PrestoError into one line + exit code; anything else too, unless --debug."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PrestoError as e:
            if _DEBUG["on"]:
                raise
            _err(f"error: {e}")
            ctx.exit(e.exit_code)
        except _PASS_THROUGH:
            raise
        except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM or SIGHUP (see _on_signal)
            _err(f"interrupted ({e.name})" if isinstance(e, Interrupted) else "interrupted")
            ctx.exit(interrupt_code(e))
        except Exception as e:  # an unexpected failure: still one line unless --debug
            if _DEBUG["on"]:
                raise
            known = known_os_error(e)
            if known is not None:
                _err(f"error: {known}")
                silence_stdout()
                ctx.exit(known.exit_code)
            _err(f"error: unexpected {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                 "(rerun with --debug for the traceback and please report it)")
            ctx.exit(1)
        finally:
            from presto_cli.claim import release_all

            release_all()  # output paths claimed by the command (see presto_cli/claim.py)


app = typer.Typer(
    name="presto",
    cls=PrestoGroup,
    help="presto: distil text-to-music diffusion models in steps (Presto-S) and layers (Presto-L).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool):
    if value:
        typer.echo(f"presto {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
):
    if debug:
        _DEBUG["on"] = True
    from presto_cli.runtime import set_quiet

    set_quiet(False)  # --quiet is per command (one process may run several: tests, CliRunner)
    if ctx.invoked_subcommand != "env":  # `presto env` still runs, to report the environment
        from presto_cli.validate import check_thread_env

        check_thread_env()


# --------------------------------------------------------------------------------------------
# Training stages


def _train(stages: tuple[str, ...], recipe_path: Path, overrides: list[str], out: Optional[Path],
           resume: bool, dry_run: bool, as_json: bool, quiet: bool = False) -> None:
    from presto_cli.recipes import dump_recipe, load_recipe, recipe_to_dict
    from presto_cli.runtime import progress_every, set_quiet

    set_quiet(quiet)
    progress_every()  # a bad PRESTO_PROGRESS_EVERY fails before any work

    recipe = load_recipe(recipe_path, overrides)
    if recipe.stage not in stages:
        cmd = {"autoencoder": "pretrain", "teacher": "pretrain", "clap": "pretrain", "text-adapter": "pretrain",
               "presto-s": "distill-steps", "ase": "distill-layers", "presto-l": "distill-layers",
               "presto-ls": "combine"}.get(recipe.stage, "?")
        raise PrestoError(f"{recipe_path} is a '{recipe.stage}' recipe, which this command does not "
                          f"train", f"use `presto {cmd} {recipe_path}`")
    info = {}
    describe = getattr(recipe, "describe", None)
    if callable(describe):
        info = describe() or {}
    if dry_run:
        if as_json:
            typer.echo(json.dumps({"recipe": recipe_to_dict(recipe), "info": info}, indent=2))
        else:
            for k, v in info.items():
                typer.echo(f"# {k}: {v}")
            typer.echo(dump_recipe(recipe), nl=False)
        return
    from presto_cli.train.loop import run_stage

    out_dir = out or Path("runs") / (recipe.name or recipe.stage)
    artefact = run_stage(recipe, out_dir, resume=resume, progress=not quiet)
    if as_json:
        typer.echo(json.dumps({"run_dir": str(out_dir), "artefact": str(artefact), "stage": recipe.stage}))
    else:
        typer.echo(str(artefact))


_RECIPE = typer.Argument(..., help="Recipe YAML file (see recipes/).", exists=False)
_OVERRIDES = typer.Argument(None, help="Dotted overrides, e.g. train.steps=3 model.depth=4.")
_OUT = typer.Option(None, "--out", "-o", help="Run directory (default runs/<name or stage>).")
_RESUME = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint.")
_DRY = typer.Option(False, "--dry-run", help="Print the resolved recipe and exit.")
_JSON = typer.Option(False, "--json", help="Machine-readable output on stdout.")
_QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar or progress lines on stderr (lines "
                      "every PRESTO_PROGRESS_EVERY seconds, default 30, when stderr is not a terminal).")


@app.command()
def pretrain(recipe: Path = _RECIPE, overrides: Optional[List[str]] = _OVERRIDES, out: Optional[Path] = _OUT,
             resume: bool = _RESUME, dry_run: bool = _DRY, as_json: bool = _JSON, quiet: bool = _QUIET):
    """Train the autoencoder, the EDM DiT teacher, the in-domain CLAP, or the text adapter (stage from the recipe)."""
    _train(("autoencoder", "teacher", "clap", "text-adapter"), recipe, overrides or [], out, resume, dry_run, as_json, quiet)


@app.command("distill-steps")
def distill_steps(recipe: Path = _RECIPE, overrides: Optional[List[str]] = _OVERRIDES,
                  out: Optional[Path] = _OUT, resume: bool = _RESUME, dry_run: bool = _DRY,
                  as_json: bool = _JSON, quiet: bool = _QUIET):
    """Presto-S: distribution matching distillation with a GAN, to 1-4 steps."""
    _train(("presto-s",), recipe, overrides or [], out, resume, dry_run, as_json, quiet)


@app.command("distill-layers")
def distill_layers(recipe: Path = _RECIPE, overrides: Optional[List[str]] = _OVERRIDES,
                   out: Optional[Path] = _OUT, resume: bool = _RESUME, dry_run: bool = _DRY,
                   as_json: bool = _JSON, quiet: bool = _QUIET):
    """Presto-L layer distillation with budget conditioning (or the ASE baseline)."""
    _train(("presto-l", "ase"), recipe, overrides or [], out, resume, dry_run, as_json, quiet)


@app.command()
def combine(recipe: Path = _RECIPE, overrides: Optional[List[str]] = _OVERRIDES, out: Optional[Path] = _OUT,
            resume: bool = _RESUME, dry_run: bool = _DRY, as_json: bool = _JSON, quiet: bool = _QUIET):
    """Presto-LS: step distillation of a Presto-L model (or apply a schedule training-free)."""
    _train(("presto-ls",), recipe, overrides or [], out, resume, dry_run, as_json, quiet)


@app.command()
def export(run_dir: Path = typer.Argument(..., help="A run directory made by a training command."),
           out: Path = typer.Option(..., "--out", "-o", help="Artefact to write (.safetensors)."),
           step: Optional[int] = typer.Option(None, "--step", help="Checkpoint step (default: latest)."),
           force: bool = typer.Option(False, "--force", help="Overwrite an existing file.")):
    """Export the inference artefact (EMA weights + metadata) from any checkpoint of a run."""
    from presto_cli.claim import claim_outputs

    if out.suffix != ".safetensors":
        raise PrestoError(f"-o {out}: an artefact is a .safetensors file", f"use -o {out.with_suffix('.safetensors')}")
    if not run_dir.is_dir():
        raise PrestoError(f"run folder not found: {run_dir}" if not run_dir.exists() else
                          f"{run_dir} is a file, expected a run folder",
                          "give the --out folder of a pretrain, distill-* or combine run")
    if not (run_dir / "recipe.yaml").is_file():
        raise PrestoError(f"{run_dir} is not a run folder (no recipe.yaml in it)",
                          "give the --out folder of a pretrain, distill-* or combine run")
    claim_outputs([out], force).acquire()
    from presto_cli.recipes import load_recipe
    from presto_cli.runtime import console
    from presto_cli.train.loop import build_task, load_checkpoint

    recipe = load_recipe(run_dir / "recipe.yaml")
    _, sd = load_checkpoint(run_dir, step, log=lambda s: console.print(s, markup=False, soft_wrap=True))
    task = build_task(recipe, run_dir)
    task.load_state_dict(sd["task"])
    task.export(out)
    typer.echo(str(out))


# --------------------------------------------------------------------------------------------
# Other commands (defined in presto_cli/commands/*; imported lazily where they are heavy)


def _mount() -> None:
    from presto_cli.commands import bench as bench_mod
    from presto_cli.commands import data as data_mod
    from presto_cli.commands import data_encode
    from presto_cli.commands import env as env_mod
    from presto_cli.commands import eval as eval_mod
    from presto_cli.commands import generate as gen_mod
    from presto_cli.commands import recipe as recipe_mod

    app.command("generate")(gen_mod.generate_cmd)
    app.command("eval")(eval_mod.eval_cmd)
    app.command("bench")(bench_mod.bench_cmd)
    data_mod.app.command("encode")(data_encode.encode_cmd)
    app.add_typer(data_mod.app, name="data", help="Data: synthesise, prepare and encode datasets.")
    app.add_typer(recipe_mod.app, name="recipe", help="Recipes: the keys of each training stage.")
    app.command("env")(env_mod.env_cmd)


_mount()


def _on_signal(signum, frame) -> None:
    """SIGTERM/SIGHUP (kill, timeout, docker, systemd, a closed terminal) take Ctrl-C's path: raised
    as :class:`Interrupted` (a KeyboardInterrupt), so finished outputs are kept, the one in
    progress is discarded and every claim is released; a repeat while cleaning up is ignored."""
    import signal

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum, signal.Signals(signum).name)


def install_signal_handlers() -> None:
    import signal

    for s in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(s) is not signal.SIG_IGN:  # nohup's ignored SIGHUP stays ignored
            signal.signal(s, _on_signal)


def main() -> None:
    install_signal_handlers()
    try:
        app()
    except OSError as e:  # raised outside a command (--version's echo to a full stdout, say)
        known = known_os_error(e)
        if known is None or _DEBUG["on"]:
            raise
        _err(f"error: {known}")
        silence_stdout()
        sys.exit(known.exit_code)


if __name__ == "__main__":
    main()
