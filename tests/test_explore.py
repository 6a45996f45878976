"""``ptq2rtl explore``: the spec's grammar and its one-line errors, the Pareto fronts, a killed run resumed,
area from hw.synth's records, and a small run on local Ray end to end."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from ptq2rtl import explore
from ptq2rtl.cli import main
from reports.explore import front, fronts
from sim.accel import load_accel
from tests.synthetic_programs import vit_program

ROOT = Path(__file__).resolve().parents[1]

SPEC = """
programs:
  - model: vit-digits
    methods: [baseline, hvit]
    widths: [W4A4]
    limit: 16
accelerators:
  base: edge-int4
  grid:
    array: [8x8, 16x16]
    lanes: array
    clock_mhz: {from: 100, to: 400, times: 2}
    units.requant.pow2_only: [false, true]
"""


def write_spec(tmp_path: Path, text: str = SPEC, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------ the spec
def test_grid_and_ranges_expand_over_the_base_and_lanes_follow_the_array(tmp_path):
    spec = explore.load_spec(write_spec(tmp_path), limit=8)
    assert [p.label for p in spec.programs] == ["vit-digits baseline W4A4", "vit-digits hvit W4A4"]
    assert all(p.limit == 8 for p in spec.programs)  # the command line's limit caps the spec's 16
    assert len(spec.accels) == 2 * 3 * 2
    assert sorted({a.accel.clock_mhz for a in spec.accels}) == [100.0, 200.0, 400.0]
    small = [a.accel for a in spec.accels if a.accel.array.rows == 8]
    assert small and all(a.array.cols == a.requant.lanes == a.softmax.lanes == a.gelu.lanes == a.layernorm.lanes == 8
                         for a in small)
    assert spec.grid_keys == ["array", "lanes", "clock_mhz", "units.requant.pow2_only"]
    assert len({a.key for a in spec.accels}) == len(spec.accels)


SPEC_ERRORS = [
    ("budget: 3\n" + SPEC, "field 'budget': unknown field"),
    (SPEC.replace("limit: 16", "limits: 16"), "field 'programs[0].limits': unknown field"),
    (SPEC.replace("clock_mhz:", "clock_mhzz:"), "unknown field 'clock_mhzz' of the base description"),
    (SPEC.replace("array: [8x8, 16x16]", "array: []"), "field 'accelerators.grid.array': empty list"),
    (SPEC.replace("{from: 100, to: 400, times: 2}", "{from: 400, to: 100, times: 2}"), "empty range"),
    (SPEC.replace("widths: [W4A4]", "widths: []"), "field 'programs[0].widths': empty list"),
    (SPEC.replace("    lanes: array\n", ""), "field 'units.requant.lanes': 16; the joined accelerator needs"),
    (SPEC.replace("    lanes: array\n", "    lanes: array\n    buffers.accumulator_kib: 1\n"), "field 'buffers.accumulator_kib': 1 KiB"),
    (SPEC.replace("    lanes: array\n", "    lanes: array\n    dram_bytes_per_cycle: 3\n"),
     "field 'dram_bytes_per_cycle': 3.0; the memory port moves a whole power-of-two"),
    (SPEC.replace("array: [8x8, 16x16]", "array: [8x8, 16x8]"), "field 'array.cols': 8; the joined accelerator"),
    (SPEC.replace("model: vit-digits", "model: resnet9000"), "unknown model 'resnet9000'"),
    (SPEC.replace("[baseline, hvit]", "[baseline, magic]"), "unknown method 'magic'"),
    (SPEC.replace("[W4A4]", "[W9A4]"), "W9A4: wbits=9 outside the accepted range [2, 8]"),
    (SPEC.replace("[W4A4]", "[4]"), "4 is not a width WnAn"),
    (SPEC.replace("base: edge-int4", "base: edge-int5"), "no accelerator named 'edge-int5'"),
]


@pytest.mark.parametrize("text, named", SPEC_ERRORS, ids=[n for _, n in SPEC_ERRORS])
def test_a_bad_spec_is_one_line_naming_it_and_writes_nothing(tmp_path, capsys, text, named):
    out = tmp_path / "out"
    assert main(["explore", str(write_spec(tmp_path, text)), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1 and err.startswith("ptq2rtl: error: ")
    assert not out.exists()


def test_without_ray_the_command_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find(name, *a))
    out = tmp_path / "out"
    assert main(["explore", str(write_spec(tmp_path)), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'ptq2rtl[explore]'" in err and err.count("\n") == 1
    assert not out.exists()


# ------------------------------------------------------------------ Pareto fronts
def test_pareto_front_of_a_hand_made_set():
    rows = [{"energy_j": 5.0, "accuracy": 90.0},   # 0: on the front (cheapest of those at 90 and above)
            {"energy_j": 6.0, "accuracy": 90.0},   # 1: dominated by 0 (same accuracy, more energy)
            {"energy_j": 4.0, "accuracy": 80.0},   # 2: on the front (the cheapest)
            {"energy_j": 9.0, "accuracy": 95.0},   # 3: on the front (the most accurate)
            {"energy_j": 9.5, "accuracy": 94.0},   # 4: dominated by 3
            {"energy_j": 4.0, "accuracy": 79.0},   # 5: dominated by 2 (same energy, less accurate)
            {"energy_j": 5.0, "accuracy": 90.0},   # 6: the same point as 0: one of them is kept
            {"energy_j": None, "accuracy": 99.0},  # 7: refused: no energy, no part in the front
            {"energy_j": 7.0, "accuracy": 92.0}]   # 8: on the front
    assert sorted(front(rows, "energy_j", "accuracy", True)) == [0, 2, 3, 8]
    # both lower-is-better: energy against area
    pts = [{"area": 1, "energy_j": 9}, {"area": 2, "energy_j": 5}, {"area": 3, "energy_j": 6}, {"area": 4, "energy_j": 1}]
    assert sorted(front(pts, "area", "energy_j", False)) == [0, 1, 3]


def test_fronts_are_per_model():
    rows = [{"model": "a", "energy_j": 1.0, "latency_s": 2.0, "accuracy": 0.5, "area": None},
            {"model": "b", "energy_j": 2.0, "latency_s": 1.0, "accuracy": 90.0, "area": None},
            {"model": "a", "energy_j": 2.0, "latency_s": 1.0, "accuracy": 0.6, "area": None}]
    found = fronts(rows)
    assert found["a"] == {"accuracy-vs-energy": [0, 2], "accuracy-vs-latency": [2]}
    assert found["b"] == {"accuracy-vs-energy": [1], "accuracy-vs-latency": [1]}  # no area: no energy-vs-area front


# ------------------------------------------------------------------ resuming
def synthetic_quantize(calls: list):
    """quantize_point without calibration: a synthetic program (power-of-two scales for hvit) and a made-up
    accuracy, so that the run's machinery is what is tested."""

    def quantize(pp):
        calls.append(pp)
        program = vit_program(wbits=pp.wbits, abits=pp.abits, pow2=pp.method == "hvit", model=pp.model)
        return program, {**asdict(pp), "n": 16, "top1": {"baseline": 93.75, "hvit": 87.5}[pp.method], "top5": 100.0}

    return quantize


def counting(calls: list, fn, stop_at: int | None = None):
    def counted(*args):
        if len(calls) == stop_at:
            raise KeyboardInterrupt  # the run is killed here
        calls.append(args)
        return fn(*args)

    return counted


def test_a_killed_run_resumes_where_it_stopped_and_gives_the_same_results(tmp_path, monkeypatch):
    spec = explore.load_spec(write_spec(tmp_path))
    programs, priced, price = [], [], explore.price_point
    monkeypatch.setattr(explore, "quantize_point", synthetic_quantize(programs))
    whole = explore.run(spec, tmp_path / "whole", workers=0, progress=False, log=lambda _: None)
    assert len(programs) == 2 and whole["computed"] == {"programs": 2, "points": 24, "areas": 0}
    rows = whole["rows"]
    assert sum(1 for r in rows if r["refused"]) == 6  # baseline's dyadic requants on the power-of-two requantizer
    assert all(r["basis"] == "schedule" and r["cycles"] > 0 for r in rows if not r["refused"])

    programs.clear()
    monkeypatch.setattr(explore, "price_point", counting(priced, price, stop_at=7))
    with pytest.raises(KeyboardInterrupt):
        explore.run(spec, tmp_path / "killed", workers=0, progress=False, log=lambda _: None)
    assert len(programs) == 2 and len(priced) == 7
    assert len(list((tmp_path / "killed" / "cache" / "points").glob("*.json"))) == 7

    programs.clear()
    priced.clear()
    monkeypatch.setattr(explore, "price_point", counting(priced, price))
    resumed = explore.run(spec, tmp_path / "killed", workers=0, progress=False, log=lambda _: None)
    assert programs == [] and len(priced) == 24 - 7
    assert resumed["computed"] == {"programs": 0, "points": 17, "areas": 0}
    assert resumed["reused"] == {"programs": 2, "points": 7, "areas": 0}
    for name in ("results.json", "results.csv"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    again = explore.run(spec, tmp_path / "killed", workers=0, progress=False, log=lambda _: None)
    assert again["computed"] == {"programs": 0, "points": 0, "areas": 0}


def test_outputs_name_the_fronts_and_the_refusals(tmp_path, monkeypatch):
    spec = explore.load_spec(write_spec(tmp_path))
    monkeypatch.setattr(explore, "quantize_point", synthetic_quantize([]))
    explore.run(spec, tmp_path / "out", workers=0, progress=False, log=lambda _: None)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    keys = results["fronts"]["vit-digits"]["accuracy-vs-energy"]
    on = [r for r in results["rows"] if r["front_accuracy_vs_energy"]]
    assert sorted(r["point_key"] for r in on) == sorted(keys)
    assert on and all(not r["refused"] for r in on)
    csv_lines = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 24 and csv_lines[0].startswith("model,method,wbits,abits")
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "6 refused by the hardware check" in summary and "requant: field 'pow2'" in summary
    assert (tmp_path / "out" / "vit-digits-accuracy-vs-energy.png").stat().st_size > 10_000
    for a in spec.accels:  # every point's description is a file that `simulate --accel` and `synth --accel` load
        loaded = load_accel(tmp_path / "out" / "accelerators" / f"{a.base}-{a.key}.yaml")
        assert replace(loaded, source="") == replace(a.accel, source="")


# ------------------------------------------------------------------ area
def test_area_is_read_from_the_shipped_synthesis_records_without_running_a_tool(tmp_path, no_synthesis_tools):
    from hw import synth

    spec = explore.load_spec(write_spec(tmp_path, """
programs: [{model: vit-digits, methods: [baseline], widths: [W4A4]}]
accelerators:
  base: ecp5-85f
  grid: {array: [8x8, 4x4], lanes: array}
area: {target: ecp5, part: 85f, freq_mhz: 100}
"""))
    found = explore.area_of(spec.accels[0].accel, spec.area)
    units = [json.loads(p.read_text()) for p in synth.SHIPPED_RESULTS.glob("*.json")]
    assert found["design"] == "units" and found["lut"] == sum(u["lut"] for u in units)
    assert found["luts"] == found["lut"] + 2 * found["carry"]
    assert explore.area_of(spec.accels[1].accel, spec.area) is None  # a 4x4 array was never synthesized


# ------------------------------------------------------------------ on Ray
def test_a_small_run_on_local_ray_end_to_end(tmp_path, capsys):
    """One real program (calibrated, lowered, evaluated on 16 images) on two accelerators, on a local Ray."""
    pytest.importorskip("ray")
    spec = write_spec(tmp_path, """
programs: [{model: vit-digits, methods: [baseline], widths: [W4A4]}]
accelerators: {base: edge-int4, grid: {array: [8x8, 16x16], lanes: array}}
""")
    out = tmp_path / "out"
    assert main(["explore", str(spec), "-o", str(out), "--workers", "1", "--limit", "16"]) == 0
    assert "to compute: 1 programs, 2 points (local Ray, 1 worker(s))" in capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["array"] for r in rows] == ["8x8", "16x16"] and all(r["n"] == 16 for r in rows)
    assert rows[0]["accuracy"] == rows[1]["accuracy"] and rows[0]["cycles"] > rows[1]["cycles"]
    assert len(list((out / "cache" / "programs").glob("*.safetensors"))) == 1
    assert main(["explore", str(spec), "-o", str(out), "--limit", "16"]) == 0  # everything finished: no Ray
    assert "to compute: 0 programs, 0 points" in capsys.readouterr().out


def test_per_site_widths_are_checked_against_the_model(tmp_path):
    base = SPEC.replace("    limit: 16\n", "    limit: 16\n    sites: {weights: {blocks.0.fc1: 8}, acts: {%s: 8}}\n")
    spec = explore.load_spec(write_spec(tmp_path, base % "blocks.0.q"))
    assert spec.programs[0].sites == (("acts", "blocks.0.q", 8), ("weights", "blocks.0.fc1", 8))
    assert spec.programs[0].label == "vit-digits baseline W4A4 blocks.0.q:a8 blocks.0.fc1:w8"
    with pytest.raises(explore.ExploreError, match=r"field 'programs\[0\].sites': unknown activation point 'nowhere'"):
        explore.load_spec(write_spec(tmp_path, base % "nowhere"))
