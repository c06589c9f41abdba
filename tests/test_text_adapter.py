"""The text adapter (presto_cli/text/adapter.py) and its training stage (METHOD.md section 2,
"Prompts as written").

Known answer: a toy teacher trained on the 2-D mixture's captions ("top left", ...) with the
weightless hash encoder has never seen the words "northwest" or "upper western corner": sampled
from them it lands near no particular component. Trained through that frozen teacher on a table
of such descriptions, the adapter must make those words land on their own component (and leave
the captions where they were); the same run with the target taken from the wrong caption must not.
Measured (300 adapter steps): the words land on their component 2% of the time before, 73% after
(the captions 94% -> 95%); the control 0.2%.
"""
import json
from pathlib import Path

import pytest
import torch

from presto_cli.errors import PrestoError
from presto_cli.recipes import load_recipe
from presto_cli.text.adapter import TextAdapter, TextAdapterConfig, adapter_from_artefact, adapter_to_artefact
from presto_cli.text.descriptions import DescriptionTable
from presto_cli.train.loop import run_stage

ROOT = Path(__file__).resolve().parents[1]

# the toy mixture's captions -> words its teacher never saw
DESCRIPTIONS = {
    "top left": ["northwest", "upper western corner", "the high west side", "up and to the west"],
    "top right": ["northeast", "upper eastern corner", "the high east side", "up and to the east"],
    "bottom left": ["southwest", "lower western corner", "the low west side", "down and to the west"],
    "bottom right": ["southeast", "lower eastern corner", "the low east side", "down and to the east"],
}


def test_untrained_adapter_is_the_identity():
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        a = TextAdapter(TextAdapterConfig(dim=16, width=8, depth=1, heads=2))
    tokens, pooled = torch.randn(3, 5, 16, generator=g), torch.randn(3, 16, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    t2, m2, p2 = a(tokens, mask, pooled)
    assert torch.equal(t2, tokens) and torch.equal(p2, pooled) and torch.equal(m2, mask)


def test_adapter_round_trips_through_an_artefact_and_refuses_another_encoder():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        a = TextAdapter(TextAdapterConfig(dim=16, width=8, depth=1, heads=2))
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.1)
    tensors, info = adapter_to_artefact(a, "hash")
    b = adapter_from_artefact(tensors, {"text_adapter": info}, "hash")
    g = torch.Generator().manual_seed(1)
    x, m, p = torch.randn(2, 4, 16, generator=g), torch.ones(2, 4, dtype=torch.bool), torch.randn(2, 16, generator=g)
    a.eval().requires_grad_(False)
    assert torch.allclose(a(x, m, p)[0], b(x, m, p)[0], atol=1e-5)
    assert adapter_from_artefact({}, {}, "hash") is None
    with pytest.raises(PrestoError, match="trained on the 'hash' text encoder"):
        adapter_from_artefact(tensors, {"text_adapter": info}, "minilm")


def test_description_table_composes_deterministically_and_refuses_bad_tables(tmp_path):
    t = DescriptionTable({"styles": {"a": {"sentences": ["s1", "s2"], "scenes": ["a park"], "sounds": ["bells"],
                                           "feels": ["bright"]}}, "moods": {"calm": ["peaceful"]}})
    assert t.compose("a", "calm", [0.1, 0.99, 0, 0, 0, 0.9]) == "s2"  # u[0] < 0.4: a whole sentence
    parts = t.compose("a", "calm", [0.9, 0.0, 0, 0, 0, 0.9])  # the first form: "{feel} music for {scene}"
    assert parts == "bright music for a park"
    assert t.compose("a", "calm", [0.9, 0.25, 0, 0, 0, 0.9]) == "music for a park, bright and peaceful"
    with pytest.raises(PrestoError, match="has no 'styles' map"):
        DescriptionTable({"moods": {}})
    bad = tmp_path / "t.json"
    bad.write_text("{not json")
    with pytest.raises(PrestoError, match="not valid JSON"):
        DescriptionTable.load(bad)


def _toy_teacher(tmp_path) -> Path:
    r = load_recipe(ROOT / "recipes" / "tiny" / "teacher.yaml", ["train.steps=300", "train.log_every=100",
                                                                 "train.device=cpu"])
    return run_stage(r, tmp_path / "teacher", progress=False)


def _train_adapter(tmp_path, teacher: Path, table: dict, name: str) -> Path:
    (tmp_path / f"{name}.json").write_text(json.dumps(table))
    r = load_recipe(ROOT / "recipes" / "tiny" / "text-adapter.yaml",
                    [f"data.teacher={teacher}", f"adapter.descriptions={tmp_path / f'{name}.json'}",
                     "train.device=cpu"])
    return run_stage(r, tmp_path / name, progress=False)


def _near(pipe, prompts: list[str], means: torch.Tensor, labels: list[int], n: int = 64) -> float:
    """The share of samples within 0.3 of their prompt's component."""
    hits = []
    for p, lab in zip(prompts, labels):
        x = pipe.sample_latents([p] * n, list(range(n)), steps=12, sampler="heun", cfg=1.0)
        hits.append(((x[:, :, 0] - means[lab]).norm(dim=1) < 0.3).float())
    return float(torch.cat(hits).mean())


@pytest.mark.slow
def test_adapter_trained_through_a_toy_teacher_makes_unseen_words_follow_their_component(tmp_path):
    from presto_cli.data.toy import gmm2d
    from presto_cli.pipeline import load_pipeline

    torch.set_num_threads(1)
    teacher = _toy_teacher(tmp_path)
    gmm = gmm2d()
    caps = gmm.captions
    right = {"styles": {c: {"sentences": DESCRIPTIONS[c]} for c in caps}}
    # the control: each caption's descriptions are the next caption's, so the target is the wrong one
    wrong = {"styles": {c: {"sentences": DESCRIPTIONS[caps[(i + 1) % len(caps)]]} for i, c in enumerate(caps)}}
    adapter = _train_adapter(tmp_path, teacher, right, "adapter")
    control = _train_adapter(tmp_path, teacher, wrong, "control")

    pipe = load_pipeline(str(teacher), "cpu", "fp32", False)
    words = [DESCRIPTIONS[c][0] for c in caps] + [DESCRIPTIONS[c][1] for c in caps]
    labels = list(range(4)) * 2
    pipe.set_text_adapter("none")
    before = _near(pipe, words, gmm.means, labels)
    captions_before = _near(pipe, caps, gmm.means, list(range(4)))
    pipe.set_text_adapter(str(adapter))
    after = _near(pipe, words, gmm.means, labels)
    captions_after = _near(pipe, caps, gmm.means, list(range(4)))
    pipe.set_text_adapter(str(control))
    ctrl = _near(pipe, words, gmm.means, labels)
    # measured: 0.02 -> 0.73 (captions 0.94 -> 0.95; the wrong-target control 0.002)
    assert before < 0.2, before  # unseen words: no particular component
    assert after > 0.6, (before, after)
    assert captions_after > captions_before - 0.1 and captions_after > 0.8, (captions_before, captions_after)
    assert ctrl < 0.3, ctrl  # trained towards the wrong caption: not the words' component


def test_text_adapter_recipe_errors(tmp_path):
    with pytest.raises(PrestoError, match="needs data.teacher"):
        load_recipe(ROOT / "recipes" / "tiny" / "text-adapter.yaml", ["data.teacher="])
    with pytest.raises(PrestoError, match=r"adapter.p_caption must lie in \[0, 1\]"):
        load_recipe(ROOT / "recipes" / "tiny" / "text-adapter.yaml", ["data.teacher=x", "adapter.p_caption=2"])


@pytest.mark.slow
def test_pretrain_text_adapter_then_generate_and_eval_with_it(tiny_chain, tmp_path):
    """`presto pretrain` trains the stage on the tiny audio chain (the synthetic corpus's style labels,
    the bundled description table); `generate` and `eval` take --text-adapter FILE|none, the sidecar
    and the results say which, the adapter changes the audio of a prompt in plain words, and the
    clip cache does not hand clips made without the adapter to a run with it."""
    from conftest import presto

    out = tmp_path / "adapter"
    presto("pretrain", ROOT / "recipes/demo/text-adapter.yaml", f"data.path={tiny_chain['data']}",
           f"data.codec={tiny_chain['codec']}", f"data.teacher={tiny_chain['teacher']}", "data.clip_seconds=1.0",
           "train.steps=4", "train.batch_size=4", "train.log_every=1", "train.ckpt_every=2", "train.warmup=0",
           "train.lr=0.05", "--out", out, "-q")
    art = out / "model.safetensors"
    from presto_cli.io import read_artefact_meta

    meta = read_artefact_meta(art)
    assert meta["kind"] == "text-adapter" and meta["text_adapter"]["text"] == "hash"
    assert meta["descriptions"]["path"].endswith("lay_descriptions.json") and meta["teacher_sha256"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4] and all(r["loss"] >= 0 for r in lines)

    args = ["--model", tiny_chain["teacher"], "--seed", 3, "--duration", 0.3, "--steps", 2, "--no-match"]
    prompt = "something to dance to in a sweaty club at three in the morning"
    presto("generate", prompt, "-o", tmp_path / "a.wav", *args, "--text-adapter", art)
    presto("generate", prompt, "-o", tmp_path / "b.wav", *args, "--text-adapter", "none")
    side_a = json.loads((tmp_path / "a.wav.json").read_text())
    side_b = json.loads((tmp_path / "b.wav.json").read_text())
    assert side_a["text_adapter"] == str(art) and side_b["text_adapter"] is None
    assert (tmp_path / "a.wav").read_bytes() != (tmp_path / "b.wav").read_bytes()
    bad = presto("generate", prompt, "-o", tmp_path / "c.wav", *args, "--text-adapter", tmp_path / "missing.st",
                 check=False)
    assert bad.returncode != 0 and "text adapter not found" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "c.wav").exists()

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": prompt, "seed": i, "name": f"p{i}"}) + "\n" for i in range(2)))
    presto("eval", "-m", tiny_chain["teacher"], "--prompts", prompts, "--metrics", "fad", "--embedder", "mel",
           "--ref", tiny_chain["data"] / "audio", "--n", 2, "--duration", 0.8, "--steps", 2, "--text-adapter", art,
           "--no-match", "--no-cache", "--out", tmp_path / "e.json", "--audio-dir", tmp_path / "ea", "-q")
    sysinfo = json.loads((tmp_path / "e.json").read_text())["systems"][0]
    assert sysinfo["text_adapter"] == str(art)
    assert json.loads((tmp_path / "ea" / sysinfo["name"] / "p0.wav.json").read_text())["text_adapter"] == str(art)
    # the clip cache keys clips by the adapter: clips made without one are not reused with one
    common = ["eval", "-m", tiny_chain["teacher"], "--prompts", prompts, "--metrics", "fad", "--embedder", "mel",
              "--ref", tiny_chain["data"] / "audio", "--n", 2, "--duration", 0.8, "--steps", 2, "--no-match", "-q"]
    runs = {}
    for name, extra in (("plain", []), ("adapted", ["--text-adapter", art]), ("again", ["--text-adapter", art])):
        presto(*common, *extra, "--out", tmp_path / f"{name}.json", "--audio-dir", tmp_path / name)
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())["systems"][0]
    assert runs["adapted"]["clips_reused"] == 0 and runs["adapted"]["clips_generated"] == 2
    assert runs["again"]["clips_reused"] == 2


def test_the_training_descriptions_hold_no_evaluation_prompt():
    """assets/lay_descriptions.json (the adapter's training text) was written without seeing the
    paraphrase sets: none of its sentences is one of their prompts, and every style of the corpus
    has descriptions the table's composer can use."""
    from presto_cli.data import synth
    from presto_cli.prompts import read_prompts

    table = DescriptionTable.load()
    sentences = {x.lower().strip(" .") for g in table.groups.values() for x in g["sentences"]}
    for path in (ROOT / "presto_cli/assets/paraphrase_prompts.jsonl", ROOT / "presto_cli/assets/paraphrase_prompts2.jsonl",
                 ROOT / "benchmarks/paraphrase_dev.jsonl"):
        prompts = {r["prompt"].lower().strip(" .") for r in read_prompts(path)}
        assert not sentences & prompts, (path.name, len(sentences & prompts))
    assert {s.name for s in synth.STYLES} <= set(table.groups)
    assert all(table.compose(g, None, [0.9, 0.5, 0.5, 0.5, 0.5, 0.5]) for g in table.groups)
