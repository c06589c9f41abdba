"""benchmarks/retrieval.py's retrieval rules on a toy bank whose right answers are known: a "hub"
caption close to every query wins plain nearest-neighbour retrieval, and CSLS, which discounts a
caption by its mean similarity to its own neighbours, prefers the specific caption instead."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def retrieval():
    spec = importlib.util.spec_from_file_location("presto_retrieval", ROOT / "benchmarks" / "retrieval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _unit(*rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_csls_discounts_the_hub_that_nearest_picks(retrieval):
    # captions 0-2 point along one axis each; captions 3 and 4 (two near-identical hubs) lie between
    # all three, so each hub's nearest other caption is the other hub (cos 0.998; an axis's: 0.58)
    bank = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [1, 1, 0.9])
    # each query is mostly its own axis: cos 0.82 to its axis, 0.93-0.95 to the hubs
    q = _unit([1.0, 0.5, 0.5], [0.5, 1.0, 0.5], [0.5, 0.5, 1.0])
    near = retrieval.rule_scores(q, bank, "nearest").argmax(1).tolist()
    assert near == [4, 4, 3]
    # brute force CSLS at K = 1: 2 cos(q, c) - (q's best cosine) - (c's best cosine to another caption)
    sim = q @ bank.T
    other = bank @ bank.T - 2 * torch.eye(5)
    expect = 2 * sim - sim.max(1, keepdim=True).values - other.max(1).values[None]
    assert torch.allclose(retrieval.rule_scores(q, bank, "csls1"), expect, atol=1e-6)
    assert retrieval.rule_scores(q, bank, "csls1").argmax(1).tolist() == [0, 1, 2]


def test_an_unknown_rule_is_refused(retrieval):
    with pytest.raises(SystemExit, match="unknown rule"):
        retrieval.rule_scores(_unit([1, 0]), _unit([1, 0], [0, 1]), "cosine")
