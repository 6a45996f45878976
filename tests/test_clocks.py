"""Honest clocks (ptq2rtl/clocks.py): an assumed clock says so, an FPGA clock is checked against a measured Fmax."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ptq2rtl import clocks
from ptq2rtl.cli import main
from sim.accel import AccelError, load_accel, parse_accel
from tests.synthetic_programs import vit_program

EDGE = Path(__file__).resolve().parents[1] / "configs" / "edge-int4.yaml"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _fpga(tmp_path: Path, clock_mhz: float, target: str = "ecp5-85f", **units) -> Path:
    data = yaml.safe_load(EDGE.read_text())
    data.update(name="fpga-test", clock_mhz=clock_mhz, target=target)
    for unit, fields in units.items():
        data["units"][unit].update(fields)
    path = tmp_path / f"fpga-{clock_mhz:g}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _synth_result(fmax: dict, part: str = "LFE5U-85F") -> dict:
    """The fields of a hw.synth.synth result that clocks.record reads."""
    return {"target": "ecp5", "part": part, "speed": "6", "lut_mapping": "ABC", "tools": {},
            "units": {u: {"fmax_mhz": f} for u, f in fmax.items()}}


ALL_UNITS = {"mac_array": 140.0, "requant": 120.0, "softmax": 101.5, "gelu": 150.0, "layernorm": 110.0}


def test_the_edge_configs_clock_is_labelled_an_assumption():
    status = clocks.clock_status(load_accel("edge-int4"))
    assert (status["basis"], status["warning"]) == ("assumed", None)
    assert "assumed" in status["note"]


def test_an_fpga_clock_without_a_measurement_is_unverified(tmp_path):
    status = clocks.clock_status(load_accel(_fpga(tmp_path, 50)))
    assert status["basis"] == "unmeasured"
    assert "no Fmax measured on LFE5U-85F" in status["warning"] and "ptq2rtl synth" in status["warning"]


def test_an_fpga_clock_is_checked_against_the_slowest_unit_measured(tmp_path):
    slow, fast = load_accel(_fpga(tmp_path, 120)), load_accel(_fpga(tmp_path, 100))
    assert clocks.record(slow, _synth_result(ALL_UNITS)) is not None
    status = clocks.clock_status(slow)
    assert (status["basis"], status["fmax_mhz"], status["limited_by"]) == ("exceeds-fmax", 101.5, "softmax")
    assert "120 MHz clock exceeds the 101.5 MHz measured" in status["warning"]
    # the same Verilog at 100 MHz: the clock is the configured one, the record the same design's
    assert clocks.design_key(slow, "ecp5-85f") == clocks.design_key(fast, "ecp5-85f")
    status = clocks.clock_status(fast)  # below every unit, but the joined design is not measured
    assert status["basis"] == "units-only" and "joined accelerator has not been placed" in status["warning"]


def test_the_joined_accelerators_fmax_is_what_the_clock_is_checked_against(tmp_path):
    slow, fast = load_accel(_fpga(tmp_path, 120)), load_accel(_fpga(tmp_path, 100))
    clocks.record(fast, _synth_result({**ALL_UNITS, clocks.ACCELERATOR: 104.0}))
    status = clocks.clock_status(fast)
    assert (status["basis"], status["fmax_mhz"], status["limited_by"], status["warning"]) == (
        "measured", 104.0, clocks.ACCELERATOR, None)
    assert "the 120 MHz clock exceeds the 104.0 MHz measured for the joined accelerator" in \
        clocks.clock_status(slow)["warning"]


def test_a_shipped_record_counts_and_the_users_own_measurement_of_the_same_verilog_overrides_it(
        tmp_path, monkeypatch):
    accel = load_accel(_fpga(tmp_path, 100))
    shipped = tmp_path / "shipped"
    monkeypatch.setattr(clocks, "SHIPPED_DIR", shipped)
    shipped.mkdir()
    clocks.record(accel, _synth_result({**ALL_UNITS, clocks.ACCELERATOR: 104.0}))
    own = next(clocks.clock_dir().glob("*.json"))
    own.rename(shipped / own.name)  # as committed: the record ptq2rtl synth wrote
    assert (clocks.clock_status(accel)["basis"], clocks.clock_status(accel)["fmax_mhz"]) == ("measured", 104.0)
    clocks.record(accel, _synth_result({clocks.ACCELERATOR: 90.0}))
    assert clocks.clock_status(accel)["basis"] == "exceeds-fmax"


def test_every_shipped_record_is_a_bundled_configs_and_was_written_by_the_tools():
    names = {load_accel(p.stem).name: p.stem for p in (clocks.SHIPPED_DIR.parent).glob("*.yaml")}
    for path in clocks.SHIPPED_DIR.glob("*.json"):
        record = json.loads(path.read_text())
        assert record["accelerator"] in names, path.name
        assert record["tools"]["nextpnr"].startswith("yowasp-nextpnr-") and record["fmax_mhz"], path.name


def test_a_different_buffer_size_is_a_different_design(tmp_path):
    accel = load_accel(_fpga(tmp_path, 100))
    data = yaml.safe_load(EDGE.read_text())
    data.update(name="fpga-test", clock_mhz=100, target="ecp5-85f")
    data["buffers"]["activation_kib"] //= 2
    smaller = parse_accel(data, "smaller.yaml")
    assert clocks.design_key(smaller, "ecp5-85f") != clocks.design_key(accel, "ecp5-85f")


def test_runs_of_single_units_merge_and_other_parts_do_not_count(tmp_path):
    accel = load_accel(_fpga(tmp_path, 100))
    assert clocks.record(accel, _synth_result({"gelu": 150.0}, part="LFE5U-45F")) is not None  # another part
    assert clocks.record(accel, _synth_result({}, part="LFE5U-85F")) is None  # nothing placed
    for unit, fmax in ALL_UNITS.items():
        assert clocks.clock_status(accel)["basis"] == "unmeasured"
        clocks.record(accel, _synth_result({unit: fmax}))
    assert clocks.clock_status(accel)["basis"] == "units-only"
    clocks.record(accel, _synth_result({clocks.ACCELERATOR: 100.0}))
    assert clocks.clock_status(accel)["basis"] == "measured"


def test_a_different_unit_makes_the_measurement_stale(tmp_path):
    accel = load_accel(_fpga(tmp_path, 100))
    clocks.record(accel, _synth_result(ALL_UNITS))
    wider = load_accel(_fpga(tmp_path, 100, softmax={"lanes": 8}))
    assert clocks.design_key(wider, "ecp5-85f") != clocks.design_key(accel, "ecp5-85f")
    assert clocks.clock_status(wider)["basis"] == "unmeasured"


def test_an_unknown_target_is_one_line_naming_the_field():
    data = yaml.safe_load(EDGE.read_text())
    data["target"] = "ecp5-12f"
    with pytest.raises(AccelError, match=r"field 'target': 'ecp5-12f' is not one of 'asic', 'ecp5-85f'"):
        parse_accel(data, "x.yaml")


def test_synth_records_what_place_and_route_measured_and_simulate_warns(tmp_path, capsys):
    """A real run: the GELU unit placed and routed on the LFE5U-85F, then simulate of a program at a clock
    above that measurement names the units still unmeasured; with every unit's Fmax recorded as above it,
    at a clock above the slowest, it warns that the clock is not met."""
    cfg = _fpga(tmp_path, 25)
    assert main(["synth", "--accel", str(cfg), "--unit", "gelu", "--json"]) == 0
    capsys.readouterr()
    accel = load_accel(cfg)
    units = clocks.clock_status(accel)
    assert units["basis"] == "unmeasured" and "gelu" not in units["warning"].split("Verilog's")[1]
    program = tmp_path / "p.safetensors"
    vit_program().save(program)
    assert main(["simulate", str(program), "--accel", str(cfg)]) == 0
    assert "warning: fpga-test: no Fmax measured on LFE5U-85F" in capsys.readouterr().err
    clocks.record(accel, _synth_result({u: 20.0 for u in ALL_UNITS if u != "gelu"}))
    assert main(["simulate", str(program), "--accel", str(cfg), "--json"]) == 0
    assert "the 25 MHz clock exceeds the 20.0 MHz measured" in capsys.readouterr().err


def test_the_bundled_fpga_config_is_edge_int4_halved_at_a_clock_below_edge_int4s():
    """configs/ecp5-85f.yaml: edge-int4's datapath at 8x8 and 8 lanes (16x16 does not fit the LFE5U-85F), so
    its own Verilog and its own key, checked against the Fmax measured for that Verilog."""
    fpga, edge = load_accel("ecp5-85f"), load_accel("edge-int4")
    assert fpga.target == "ecp5-85f" and fpga.clock_mhz < edge.clock_mhz
    assert (fpga.array.rows, fpga.array.cols, fpga.requant.lanes) == (8, 8, 8)
    assert (fpga.array.weight_bits, fpga.array.act_bits) == (edge.array.weight_bits, edge.array.act_bits)
    assert clocks.design_key(fpga, "ecp5-85f") != clocks.design_key(edge, "ecp5-85f")
    # the shipped record (configs/fmax/) is for today's Verilog, and every unit alone meets the clock
    status = clocks.clock_status(fpga)
    assert status["basis"] == "units-only" and status["fmax_mhz"] >= fpga.clock_mhz
