"""``ptq2rtl mixed``: greedy mixed precision under an energy or size budget."""

from __future__ import annotations

import json

import pytest

from ptq2rtl import mixed, sensitivity
from ptq2rtl.cli import main
from quant.quantizers import QuantError
from sim.accel import load_accel


@pytest.mark.parametrize("text, want", [("energy:4000", mixed.Budget("energy", value=4000.0)),
                                        ("size:12.5", mixed.Budget("size", value=12.5)),
                                        ("energy:W6A6", mixed.Budget("energy", scheme=6))])
def test_budget_forms(text, want):
    assert mixed.Budget.parse(text) == want


@pytest.mark.parametrize("text, named", [("power:3", "KIND:AMOUNT"), ("energy:", "KIND:AMOUNT"),
                                         ("size:W6A4", "uniform WnAn"), ("size:W9A9", "outside"),
                                         ("energy:lots", "neither a number"), ("energy:-1", "positive")])
def test_bad_budgets_are_named(text, named):
    with pytest.raises(QuantError, match=named):
        mixed.Budget.parse(text)


def test_bad_budget_on_the_command_line_is_one_line(capsys):
    assert main(["mixed", "vit-digits", "--budget", "watts:3"]) == 2
    err = capsys.readouterr().err
    assert "KIND:AMOUNT" in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def few_sites(monkeypatch):
    """Three rows of the sensitivity grouping, to keep a run short: two layers' weights and one point."""
    every = sensitivity.groups
    keep = {("blocks.0.fc1", "weights"), ("blocks.1.fc2", "weights"), ("blocks.0.gelu", "acts")}
    monkeypatch.setattr(sensitivity, "groups", lambda *a: [g for g in every(*a) if (g.label, g.kind) in keep])


@pytest.mark.usefixtures("few_sites")
def test_greedy_stays_within_a_size_budget_and_measures_its_point():
    # a budget between uniform W4A4 and W6A6 in weight size: some sites fit, not all
    result = mixed.greedy("vit-digits", "baseline", 4, mixed.Budget("size", value=235.0), accel=load_accel("edge-int8"),
                          limit=32, progress=False)
    assert set(result["uniform"]) == {"W4A4", "W8A8"}
    base = result["uniform"]["W4A4"]
    assert base["size"] < 235.0 < result["uniform"]["W8A8"]["size"]
    assert len(result["rows"]) == 3 and all(r["n"] == 32 for r in result["rows"])
    for r in result["rows"]:  # gain and cost against the uniform scheme
        assert r["gain"] == pytest.approx(r["metric"] - base["metric"])
        assert r["cost"] == pytest.approx(r["size"] - base["size"])
    weights = {r["site"]: r for r in result["rows"] if r["kind"] == "weights"}
    assert all(r["cost"] > 0 for r in weights.values())  # raising weights costs size; an activation point does not
    point = result["point"]
    assert point["size"] <= 235.0  # measured whole, within the budget
    raised = set(result["sites"]["weights"]) | set(result["sites"]["acts"])
    assert raised == {c["site"] for c in result["chosen"]}
    assert all(c["gain"] > 0 for c in result["chosen"])


def test_a_budget_below_the_narrow_scheme_is_refused(monkeypatch):
    monkeypatch.setattr(sensitivity, "groups", lambda *a: [])
    with pytest.raises(QuantError, match="over the budget"):
        mixed.greedy("vit-digits", "baseline", 4, mixed.Budget("size", value=1.0), accel=load_accel("edge-int8"),
                     limit=8, progress=False)


@pytest.mark.usefixtures("few_sites")
def test_mixed_command_end_to_end(capsys, tmp_path):
    plot = tmp_path / "mixed.png"
    assert main(["mixed", "vit-digits", "--method", "baseline,repq", "--budget", "size:W6A6", "--limit", "16",
                 "--plot", str(plot), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in results] == ["baseline", "repq"]
    for result in results:
        assert result["budget"] == "size <= uniform W6A6"
        assert result["budget_value"] == pytest.approx(result["uniform"]["W6A6"]["size"])
        assert result["point"]["size"] <= result["budget_value"]
    assert plot.stat().st_size > 0
