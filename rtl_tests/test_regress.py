"""rtl_tests.regress.run: the summary the `ptq2rtl regress` command prints; the exported sizes it runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtl_tests import regress, units
from sim.accel import CONFIG_DIR, UNIT_PARAMS, load_accel

ACCELS = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))


def test_regress_summary_counts_vectors_mismatches_and_cycles():
    s = regress.run("icarus", ["gelu"])
    u = s["units"]["gelu"]
    assert s["ok"] and s["mismatches"] == 0 and s["cycle_mismatches"] == 0
    assert u["vectors"] == s["vectors"] >= 10_000
    assert {"random", "corner"} <= set(u["sources"])
    assert all(c["measured"] == c["model"] for r in u["runs"] for c in r["cycles"])
    assert s["exported"] == "none" and {r["kind"] for r in u["runs"]} == {"bench", "trace"}
    text = regress.format_summary(s)
    assert text.startswith("RTL regression on icarus") and "gelu" in text
    assert "4 lanes, 256 x int8 table" in text  # the size of each bench run


def test_regress_on_verilator_runs_and_prints_the_exported_sizes():
    s = regress.run("verilator", ["gelu"], with_traces=False)
    assert s["ok"] and s["exported"] in ("default", "full")
    runs = {r["bench"]: r for r in s["units"]["gelu"]["runs"]}
    edge = [a for a in ACCELS if a.startswith("edge-")]  # the edge configs share a 16-lane GELU unit
    label = "exported " + "+".join(edge)
    assert runs[label]["kind"] == "exported" and runs[label]["params"] == UNIT_PARAMS["gelu"](load_accel(edge[0]))
    assert runs[label]["vectors"] >= 10_000 and runs[label]["cycle_checks"] > 0
    assert set(runs[label]["seconds"]) == {"verilog", "build", "run"}
    assert f"{label:<40} 16 lanes, 256 x int16 table" in regress.format_summary(s)
    assert runs["exported ecp5-85f"]["params"]["lanes"] == 8  # the FPGA config's own, smaller unit


def test_regress_runs_every_unit_asked_for_at_each_size_and_sums_them(monkeypatch):
    """The summary's bookkeeping, with each bench run replaced by a fixed summary of its own parameters."""
    def fake(unit, config, sim):
        dut = units.build(unit, config)
        dut._MustUse__silence = True
        return {"params": dut.params, "vectors": 7, "mismatches": 0, "sources": {"random": 7},
                "mismatch_details": [], "cycles": [{"what": config, "measured": 3, "model": 3}],
                "seconds": {"verilog": 0, "build": 0, "run": 0}}

    monkeypatch.setattr(units, "run_config", fake)
    names = ["requant", "mac_array"]
    for full in (False, True):
        s = regress.run("verilator", names, with_traces=False, full=full)
        assert list(s["units"]) == names and s["ok"] and s["exported"] == ("full" if full else "default")
        for unit in names:
            runs = s["units"][unit]["runs"]
            want = list(units.CONFIGS[unit]) + units.exported(unit, full)
            assert [r["bench"].removeprefix("exported ") for r in runs] == want
            assert s["units"][unit]["vectors"] == 7 * len(want)
        assert s["vectors"] == 7 * sum(len(s["units"][u]["runs"]) for u in names)
        text = regress.format_summary(s)
        assert "exported edge-int8" in text if full else "exported edge-int8" not in text
        assert "16x16 int4xint4, m<=512, k<=4096, log2" in text and "16 lanes, 2048 channels" in text
    assert regress.run("icarus", names, with_traces=False)["exported"] == "none"


@pytest.mark.parametrize("unit", list(units.UNITS))
def test_exported_sizes_are_what_ptq2rtl_verilog_builds_each_parameter_set_once(unit):
    """Every bundled description's unit is one exported size, built with exactly ``UNIT_PARAMS[unit]``."""
    labels = units.EXPORTED[unit]
    assert sorted(name for names in labels.values() for name in names) == ACCELS
    seen = set()
    for label, names in labels.items():
        dut = units.build(unit, label)
        dut._MustUse__silence = True  # built to read its parameters, not elaborated
        for name in names:
            want = UNIT_PARAMS[unit](load_accel(name))
            assert {k: dut.params[k] for k in want} == want, (label, name)
        key = json.dumps(UNIT_PARAMS[unit](load_accel(names[0])), sort_keys=True)
        assert key not in seen, f"{unit}: {label} repeats another label's parameters"
        seen.add(key)
    assert units.exported(unit, True) == list(labels)
    assert set(units.exported(unit, False)) == {lb for lb in labels if (unit, lb) not in units.FULL_ONLY}


def test_the_default_slice_keeps_every_unit_at_edge_int4_size():
    for unit in units.UNITS:
        assert any("edge-int4" in units.EXPORTED[unit][lb] for lb in units.exported(unit, False)), unit
    assert all(lb in units.EXPORTED[unit] for unit, lb in units.FULL_ONLY)


def _exported_vectors(unit, accel="edge-int4"):
    label = next(lb for lb, names in units.EXPORTED[unit].items() if accel in names)
    dut = units.build(unit, label)
    dut._MustUse__silence = True
    return dut.params, units.UNITS[unit][1](dut.params)


def test_exported_requant_vectors_address_every_channel_of_the_table():
    p, v = _exported_vectors("requant")
    assert p["channels"] == 2048 and p["lanes"] == 16
    assert set(v["ch"].tolist()) == set(range(p["channels"]))


def test_exported_gelu_vectors_read_every_entry_of_the_16_bit_table():
    p, v = _exported_vectors("gelu")
    assert (p["in_bits"], p["out_bits"]) == (8, 16)
    assert set(v["x"].tolist()) == set(range(-128, 128))
    assert np.abs(v["seg_table"]).max() > 127  # entries a int8 table could not hold


def test_exported_softmax_and_layernorm_vectors_fill_the_row_buffers():
    p, v = _exported_vectors("softmax")
    assert v["seg_len"].max() == p["max_len"] == 256 and 1 in v["seg_len"]
    assert any(n % p["lanes"] for n in v["seg_len"])  # rows ending inside a beat
    p, v = _exported_vectors("layernorm")
    assert v["seg_len"].max() == p["max_n"] == 1024 and 1 in v["seg_len"]


@pytest.mark.parametrize("accel", ["edge-int4", "edge-int8"])
def test_exported_mac_array_vectors_run_full_folds_the_deepest_buffer_and_the_longest_reduction(accel):
    p, v = _exported_vectors("mac_array", accel)
    rows, cols = p["rows"], p["cols"]
    assert (rows, cols, p["max_m"]) == (16, 16, 512)
    shapes = list(zip(v["g_m"].tolist(), v["g_k"].tolist(), v["g_n"].tolist()))
    assert any(k % rows == 0 and n % cols == 0 and k > rows and n > cols for _, k, n in shapes)  # full folds
    assert any(k % rows and n % cols for _, k, n in shapes)  # and partial ones
    assert max(m for m, _, _ in shapes) == p["max_m"]
    assert max(k for _, k, _ in shapes) == p["max_k"] == 4096
    assert {0, 1, 2} <= set(v["g_kind"].tolist())
