"""``ptq2rtl report --quick``: every file written, with the expected rows; a re-run reuses the cache."""

from __future__ import annotations

import json

import pytest

from ptq2rtl.cli import main
from reports import plots, tables


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["report", "--quick", "--limit", "64", "-o", str(out)]) == 0
    return out


def test_quick_report_writes_every_file(quick_report):
    results = json.loads((quick_report / "results.json").read_text())
    expected = {"REPORT.md", "results.json", "synthesis.png"}
    for model in ("vit-digits", "minilm"):
        expected |= {f"{model}-accuracy-vs-energy-edge-int4.png", f"{model}-accuracy-vs-energy-edge-int8.png",
                     f"{model}-breakdown-w4a4-edge-int4.png", f"{model}-per-layer-w4a4-edge-int4.png"}
    written = {p.name for p in quick_report.iterdir() if p.is_file()}
    assert expected <= written
    for name in expected - {"REPORT.md", "results.json"}:
        assert (quick_report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["quick"] is True


def test_quick_report_holds_the_expected_rows(quick_report):
    results = json.loads((quick_report / "results.json").read_text())
    rows = {(e["model"], e["method"], e["wbits"]) for e in results["entries"]}
    assert rows == {("vit-digits", "baseline", 4), ("minilm", "baseline", 4)}
    for e in results["entries"]:
        assert set(e["accel"]) == {"edge-int4", "edge-int8", "ecp5-85f"}
        for sim in e["accel"].values():
            assert sim["energy_j"] > 0 and sim["cycles"] > 0 and 0 < sim["utilization"] <= 1
        metric = "top1" if e["model"] == "vit-digits" else "cosine"
        assert metric in e["paper"] and metric in e["integer"]
    assert results["regression"]["vectors"] > 0 and results["regression"]["ok"]
    assert results["synthesis"]["rows"]
    md = (quick_report / "REPORT.md").read_text()
    for needle in ("## vit-digits", "## minilm", "| baseline | W4A4 |", "edge-int8", "## The accelerator on an FPGA", "RTL regression on"):
        assert needle in md
    for f in plots.write_all(results, quick_report):
        assert f"]({f})" in md


def test_rerun_reuses_cached_entries(quick_report, capsys):
    assert main(["report", "--quick", "--limit", "64", "-o", str(quick_report)]) == 0
    out = capsys.readouterr().out
    assert "vit-digits baseline W4A4: cached" in out and "minilm baseline W4A4: cached" in out


def test_pareto_front_keeps_only_undominated_points():
    pts = [(1.0, 0.5), (2.0, 0.9), (1.5, 0.4), (3.0, 0.95), (2.5, 0.8)]
    assert plots.pareto(pts) == [0, 1, 3]


def test_the_fpga_table_puts_the_whole_accelerator_beside_its_units_with_its_throughput():
    placed = {"lut": {"used": 40000, "available": 83640}, "ff": {"used": 30000, "available": 83640},
              "dsp": {"used": 80, "available": 156}, "bram": {"used": 150, "available": 208}}
    rows = [{"unit": "accelerator", "config": "ecp5-85f", "luts": 39000, "ffs": 29000, "dsps": 80, "brams": 150,
             "placed": placed, "fmax_mhz": 61.25},
            {"unit": "gelu", "config": "ecp5-85f", "luts": 200, "ffs": 100, "dsps": 0, "brams": 8,
             "fmax_mhz": None, "fmax_note": "stopped after 900 s"},
            {"unit": "requant", "config": "edge-int4, power-of-two M", "luts": 9000, "ffs": 3000, "dsps": 0,
             "brams": 48, "fmax_mhz": 120.0}]
    sim = {"clock_mhz": 60, "latency_s": 2e-3, "gops": 1.5, "peak_gops": 7.68, "gops_per_w": 300.0,
           "energy_preset": "horowitz45"}
    results = {"synthesis": {"rows": rows, "available": {"luts": 83640, "dsps": 156, "brams": 208},
                             "target": "LFE5U-85F", "speed": "6", "freq_mhz": 100,
                             "clock": {"mhz": 60, "note": "at or below the 61.2 MHz measured"}},
               "entries": [{"model": "vit-digits", "method": "baseline", "wbits": 4, "accel": {"ecp5-85f": sim}}]}
    md = "\n".join(tables.synthesis_table(results))
    assert "| **accelerator** | 40,000 / 83,640 | 30,000 / 83,640 | 80 / 156 | 150 / 208 | 61.2 |" in md
    assert "| gelu | 200 / 83,640 (yosys) |" in md and "stopped after 900 s" in md
    assert "Configured clock 60 MHz: at or below the 61.2 MHz measured." in md
    assert "vit-digits baseline W4A4 on ecp5-85f at 60 MHz: 2.000 ms, 1.5 GOPS of 7.68 peak, 300 GOPS/W" in md
    assert "| requant | edge-int4, power-of-two M | 9,000 |" in md
