"""Verilog out of the Amaranth designs: the whole accelerator and each unit, plus a manifest.

``export(accel, out_dir)`` builds every unit of an accelerator description
(``sim.accel``) with its ``from_accel`` sizing and the accelerator that joins
them (``hw.accelerator``), writes ``accelerator.v`` and ``<unit>.v`` (plain
Verilog-2005, what Yosys and vendor tools synthesize), a Verilator waiver file,
and ``manifest.json``: per design its module, file, class, parameters, ports,
and the cycle contract it follows (``sim.isa.instr_cycles`` for the
accelerator, a ``sim.timing`` formula for a unit); with ``lint`` each file is
checked with ``verilator --lint-only -Wall`` under the waivers.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from amaranth.back import verilog as amaranth_verilog
from amaranth.hdl import Shape
from amaranth.lib import data, wiring

from hw.accelerator import Accelerator
from hw.gelu import Gelu
from hw.layernorm import LayerNorm
from hw.mac_array import MacArray
from hw.requant import Requantizer
from hw.softmax import SoftmaxLog2
from sim.accel import ACCELERATOR

#: unit name -> (component class, the sim.timing function its cycle count follows)
UNITS = {
    "mac_array": (MacArray, "gemm_cycles / mac_fold_cycles"),
    "requant": (Requantizer, "stream_cycles"),
    "softmax": (SoftmaxLog2, "softmax_row_cycles"),
    "gelu": (Gelu, "stream_cycles"),
    "layernorm": (LayerNorm, "layernorm_row_cycles"),
}

#: every design that is exported and synthesized on its own: the units and the accelerator joining them
DESIGNS = (*UNITS, ACCELERATOR)

#: Verilator -Wall warnings the Amaranth/Yosys backend produces by construction, each waived with its reason
WAIVERS = {
    "WIDTHEXPAND": "the backend relies on Verilog's implicit zero/sign extension of narrower operands",
    "WIDTHTRUNC": "the backend relies on Verilog's implicit truncation on assignment to narrower targets",
    "UNUSEDSIGNAL": "intermediate wires keep every bit of a product or sum, not all of which are read",
    "PROCASSINIT": "registers carry their reset value as an initializer as well as in the reset branch",
    "CASEINCOMPLETE": "FSM case statements have no default: the value before the case is the default",
    "DECLFILENAME": "a design's file holds its submodules too (accelerator.v: every unit inside it)",
}


class ExportError(RuntimeError):
    pass


def to_verilog(component: wiring.Component, name: str, for_simulation: bool = False) -> str:
    """Verilog text of ``component`` as module ``name`` (ports ``clk``, ``rst`` and the signature's members).

    ``for_simulation`` turns the ``always @*`` blocks into ``always_comb``: an
    ``always @*`` block whose inputs never change is never run by an event
    simulator (Icarus leaves its outputs X; amaranth-lang/amaranth#1629), while
    ``always_comb`` runs once at time zero. Synthesis reads either the same way.
    """
    text = amaranth_verilog.convert(component, name=name, emit_src=False)
    if for_simulation:
        text = text.replace("always @* begin", "always_comb begin")
    return text


def ports(component: wiring.Component) -> list[dict]:
    """The ports of a converted unit: name, direction, width, and for lane arrays the element width and count."""
    out = [{"name": "clk", "dir": "in", "width": 1}, {"name": "rst", "dir": "in", "width": 1}]
    for name, member in component.signature.members.items():
        shape = member.shape
        entry = {"name": name, "dir": "in" if member.flow == wiring.In else "out"}
        if isinstance(shape, data.ArrayLayout):
            elem = Shape.cast(shape.elem_shape)
            entry.update(width=shape.size, lanes=shape.length, elem_width=elem.width, elem_signed=elem.signed)
        elif isinstance(shape, data.Layout):
            entry.update(width=shape.size, fields={k: Shape.cast(f.shape).width for k, f in shape})
        else:
            cast = Shape.cast(shape)
            entry.update(width=cast.width, signed=cast.signed)
        out.append(entry)
    return out


def units_from_accel(accel, units: list[str] | None = None) -> dict[str, wiring.Component]:
    """The units (all, or ``units``) of accelerator ``accel`` (an ``AccelConfig``, or a config name / YAML path)."""
    if isinstance(accel, (str, Path)):
        from sim.accel import load_accel

        accel = load_accel(accel)
    _check_names(units or [], UNITS)
    return {name: cls.from_accel(accel) for name, (cls, _) in UNITS.items() if units is None or name in units}


def _check_names(names, accepted) -> None:
    unknown = sorted(set(names) - set(accepted))
    if unknown:
        raise ExportError(f"unknown unit {unknown[0]!r} (accepted: {', '.join(accepted)})")


def components(accel_or_params, names: list[str] | None = None,
               whole: bool = True) -> tuple[str, dict[str, wiring.Component]]:
    """The designs ``names`` (default: every unit, and with ``whole`` the accelerator) of an accelerator
    description, or of ``{unit: constructor arguments}`` for a hand-picked set of units."""
    if isinstance(accel_or_params, dict):
        _check_names(accel_or_params, UNITS)
        if names is not None and ACCELERATOR in names:
            raise ExportError("the accelerator is built from an accelerator description, not from unit parameters")
        _check_names(names or [], UNITS)
        return "custom", {u: UNITS[u][0](**kw) for u, kw in accel_or_params.items() if names is None or u in names}
    if isinstance(accel_or_params, (str, Path)):
        from sim.accel import load_accel

        accel_or_params = load_accel(accel_or_params)
    _check_names(names or [], DESIGNS)
    comps = units_from_accel(accel_or_params, None if names is None else [n for n in names if n in UNITS])
    if (names is None and whole) or (names is not None and ACCELERATOR in names):
        comps = {ACCELERATOR: Accelerator.from_accel(accel_or_params), **comps}
    return accel_or_params.name, comps


def waiver_file() -> str:
    lines = ["`verilator_config", "// Warnings of Amaranth's Verilog backend, by construction (see hw/verilog.py)"]
    for rule, why in WAIVERS.items():
        lines.append(f"// {rule}: {why}")
        lines.append(f"lint_off -rule {rule}")
    return "\n".join(lines) + "\n"


def lint(path: Path, top: str, waivers: Path) -> dict:
    """``verilator --lint-only -Wall`` on one file under the waivers: ``{"ok", "warnings"}``."""
    from hw import toolchain

    toolchain.setup_verilator()
    r = subprocess.run(["verilator", "--lint-only", "-Wall", str(waivers), str(path), "--top-module", top],
                       capture_output=True, text=True)
    warnings = sorted(set(re.findall(r"%(?:Warning|Error)-(\w+)", r.stderr)))
    return {"ok": r.returncode == 0, "warnings": warnings, "log": r.stderr[-2000:] if r.returncode else ""}


def export(accel_or_params, out_dir: str | Path, *, lint_files: bool = True, whole: bool = True) -> dict:
    """Write ``accelerator.v`` (with ``whole``, for an accelerator description) and one Verilog file per unit,
    ``verilator.vlt`` and ``manifest.json`` into ``out_dir``; return the manifest."""
    out = Path(out_dir)
    name, comps = components(accel_or_params, whole=whole)  # parameter errors before anything is written
    out.mkdir(parents=True, exist_ok=True)
    waivers = out / "verilator.vlt"
    waivers.write_text(waiver_file())
    manifest = {"accelerator": name, "generator": "ptq2rtl hw (Amaranth 0.5)", "clock": "clk", "reset": "rst (sync)",
                "waivers": WAIVERS, "units": {}}
    for design, comp in comps.items():
        path = out / f"{design}.v"
        tmp = path.with_suffix(".v.tmp")
        tmp.write_text(to_verilog(comp, design))
        tmp.replace(path)
        entry = {"module": design, "file": path.name, "class": type(comp).__name__, "params": comp.params}
        if design == ACCELERATOR:
            entry["cycles"] = "sim.isa.instr_cycles (instruction set: sim.isa)"
        else:
            entry.update(latency=getattr(comp, "latency", None), timing=f"sim.timing.{UNITS[design][1]}")
        entry["ports"] = ports(comp)
        if lint_files:
            entry["lint"] = lint(path, design, waivers)
        if design == ACCELERATOR:
            manifest["top"] = entry  # the joined design; "units" lists each unit on its own
        else:
            manifest["units"][design] = entry
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
