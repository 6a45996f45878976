"""``ptq2rtl sensitivity``: the rows it runs, and a run on vit-digits end to end."""

from __future__ import annotations

import json

import pytest

from ptq2rtl import sensitivity
from ptq2rtl.cli import main
from quant.plan import Sites

LINEARS = ["patch_embed", "blocks.0.q", "blocks.0.fc1", "blocks.1.q", "head"]
POINTS = ["blocks.0.ln1", "blocks.0.q", "blocks.1.ln1", "norm"]


def test_site_rows_raise_one_site_each_in_forward_order():
    rows = sensitivity.groups(LINEARS, POINTS, 8, "site")
    assert [(g.label, g.kind) for g in rows] == [
        ("patch_embed", "weights"), ("blocks.0.q", "weights"), ("blocks.0.fc1", "weights"), ("blocks.0.ln1", "acts"),
        ("blocks.0.q", "acts"), ("blocks.1.q", "weights"), ("blocks.1.ln1", "acts"), ("head", "weights"),
        ("norm", "acts")]
    assert rows[4].sites == Sites(acts={"blocks.0.q": 8})  # the q output point, not the q linear's weights
    assert all(len(g.sites.weights) + len(g.sites.acts) == 1 for g in rows)


def test_layer_rows_raise_every_site_of_a_block():
    rows = sensitivity.groups(LINEARS, POINTS, 6, "layer")
    assert [g.label for g in rows] == ["embed", "blocks.0", "blocks.1", "head"]
    assert rows[1].sites == Sites(weights={"blocks.0.q": 6, "blocks.0.fc1": 6}, acts={"blocks.0.ln1": 6, "blocks.0.q": 6})
    assert rows[3].sites == Sites(weights={"head": 6}, acts={"norm": 6})


@pytest.mark.parametrize("args, named", [(["--bits", "8"], "high=8 must be wider than bits=8"),
                                         (["--high", "9"], "high=9 outside"), (["--method", "nope"], "unknown method")])
def test_bad_requests_are_one_line(args, named, capsys):
    assert main(["sensitivity", "vit-digits", *args]) == 2
    assert named in capsys.readouterr().err


def test_vit_digits_layer_sensitivity_end_to_end(tmp_path, capsys, monkeypatch):
    """Two of the layer rows (to keep it short): each is calibrated with its override and measured on the
    golden engine; the first and last rows are the uniform schemes, and the plot is written."""
    every = sensitivity.groups
    monkeypatch.setattr(sensitivity, "groups", lambda *a: [g for g in every(*a) if g.label in ("blocks.0", "head")])
    plot = tmp_path / "sens.png"
    assert main(["sensitivity", "vit-digits", "--method", "baseline", "--bits", "4", "--by", "layer", "--limit", "64",
                 "--plot", str(plot), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    assert [r["scheme"] for r in rows] == ["W4A4", "W4A4 + blocks.0 layer at 8", "W4A4 + head layer at 8", "W8A8"]
    assert all(r["n"] == 64 and 0 <= r["metric"] <= 100 for r in rows)
    assert rows[0]["gain"] == 0 and rows[-1]["gain"] == pytest.approx(rows[-1]["metric"] - rows[0]["metric"])
    assert plot.stat().st_size > 0
