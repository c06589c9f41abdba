"""`presto recipe show STAGE` and `presto env`'s default model, through the real typer app."""
import json

from typer.testing import CliRunner

from conftest import ROOT

runner = CliRunner()


def test_recipe_show_lists_every_key_with_type_default_and_meaning():
    from presto_cli.cli import app
    from presto_cli.recipes import load_recipe, recipe_class, recipe_to_dict, stage_names

    for stage in [s for s in stage_names() if not s.startswith("_")]:  # tests register "_unit"
        r = runner.invoke(app, ["recipe", "show", stage, "--json"])
        assert r.exit_code == 0, r.output
        rows = json.loads(r.stdout)
        defaults = recipe_to_dict(recipe_class(stage)())
        for row in rows:
            node = defaults
            for part in row["key"].split("."):
                node = node[part]
            assert row["default"] == node, (stage, row)  # the dataclass default, not a copy
            assert row["type"] and row["meaning"] and "\n" not in row["meaning"], (stage, row)
        leaves = []

        def walk(d, prefix=""):
            for k, v in d.items():
                walk(v, f"{prefix}{k}.") if isinstance(v, dict) else leaves.append(prefix + k)

        walk(defaults)
        assert [row["key"] for row in rows] == leaves  # every key, once, in recipe order
    teacher = {row["key"]: row for row in json.loads(runner.invoke(app, ["recipe", "show", "teacher", "--json"]).stdout)}
    assert teacher["edm.cfg"]["meaning"] == "inference guidance weight w (1 = no guidance)"  # the source comment
    assert teacher["edm.sampler"]["type"] == "euler | heun | dpmpp_2m | fewstep"
    assert teacher["train.grad_clip"]["meaning"].startswith("clip of the gradient norm")
    # every listed key is a key the recipe loader accepts
    load_recipe(ROOT / "recipes" / "tiny" / "teacher.yaml",
                [f"{k}={json.dumps(v['default'])}" for k, v in teacher.items()
                 if k not in ("stage", "data.path", "data.codec", "model.in_channels", "model.max_frames")])


def test_recipe_show_text_and_unknown_stage():
    from presto_cli.cli import app

    r = runner.invoke(app, ["recipe", "show", "presto-s"])
    assert r.exit_code == 0
    line = next(x for x in r.stdout.splitlines() if x.startswith("distill.update_ratio"))
    assert line.split()[1:3] == ["int", "5"] and "fake-score updates per generator update" in line
    bad = runner.invoke(app, ["recipe", "show", "teachr"])
    assert bad.exit_code == 1 and "did you mean 'teacher'" in bad.output


def test_env_names_the_default_model():
    from presto_cli.cli import app
    from presto_cli.pipeline import default_model_name

    r = runner.invoke(app, ["env", "--json"])
    assert r.exit_code == 0
    assert json.loads(r.stdout)["default_model"] == default_model_name()
