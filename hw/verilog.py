"""Verilog out of the Amaranth units: one file per unit, plus a manifest of parameters and ports."""

from __future__ import annotations

import json
from pathlib import Path

from amaranth.back import verilog as amaranth_verilog
from amaranth.lib import wiring


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
        entry = {"name": name, "dir": "in" if member.flow == wiring.In else "out",
                 "width": shape.size if hasattr(shape, "size") else shape.width}
        if hasattr(shape, "elem_shape"):
            elem = shape.elem_shape
            entry["lanes"] = shape.length
            entry["elem_width"] = elem.width
            entry["elem_signed"] = elem.signed
        elif hasattr(shape, "signed"):
            entry["signed"] = shape.signed
        out.append(entry)
    return out
