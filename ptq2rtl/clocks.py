"""Where an accelerator's clock comes from: an assumption, or an Fmax measured on the FPGA it targets.

An accelerator description says what its ``clock_mhz`` is for (``target:``):

* ``asic`` (the edge configs): an ASIC-style design point. The clock is an
  assumption; nothing here has been measured at it, and every latency printed
  at it says so.
* an FPGA part (``ecp5-85f``, ``ecp5-45f``, ``ecp5-25f``, ``ice40-up5k``): the
  clock must not exceed the Fmax that place and route measured for the
  config's own Verilog on that part. ``ptq2rtl synth`` records what it
  measured (:func:`record`); ``simulate`` and the report read the record
  (:func:`clock_status`) and warn when the clock is above it or when nothing
  has been measured for this Verilog yet.

A record is keyed by what determines the Verilog -- every unit's build
parameters (``sim.accel.*_params``), the buffers, the array and the memory
port that size the joined design, the source of ``hw/`` and the Amaranth
version -- and by the part, so editing the RTL or the config makes an old
measurement stale instead of wrong. The clock is checked against the joined
accelerator's Fmax (``accelerator`` in the record). Where only the units have
been placed and routed (each on its own, inside a three-pin wrapper), the
lowest of theirs is shown, with a warning that the design itself is
unmeasured: a unit alone is not the design. Records live next to the synthesis
cache, ``$XDG_CACHE_HOME/ptq2rtl/synth/clocks/``; the records of the bundled configs' Verilog, as
``ptq2rtl synth`` wrote them, ship in ``configs/fmax/`` (a whole-design place and route takes hours), and a
user's own measurement of the same Verilog takes precedence over the shipped one.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from sim.accel import ACCELERATOR, FPGA_TARGETS, UNIT_PARAMS, AccelConfig

HW_DIR = Path(__file__).resolve().parents[1] / "hw"
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "configs" / "fmax"  #: the bundled configs' records
UNITS = tuple(UNIT_PARAMS)  #: the units whose Verilog the design is made of


def clock_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ptq2rtl" / "synth" / "clocks"


def design_key(accel: AccelConfig, part: str) -> str:
    """A hash of what the config's Verilog on ``part`` is made from: unit parameters, hw/ source, Amaranth."""
    h = hashlib.sha256()
    sizes = {"units": {u: accel.unit_params(u) for u in UNITS}, "buffers": accel.buffers, "array": accel.array,
             "dram_bytes_per_cycle": accel.dram_bytes_per_cycle}
    h.update(json.dumps(sizes, sort_keys=True, default=str).encode())
    for path in sorted(HW_DIR.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    try:
        h.update(metadata.version("amaranth").encode())
    except metadata.PackageNotFoundError:
        pass
    h.update(part.encode())
    return h.hexdigest()[:24]


def _path(accel: AccelConfig, part: str, folder: Path | None = None) -> Path:
    return (folder or clock_dir()) / f"{accel.name}-{part}-{design_key(accel, part)}.json"


def measured(accel: AccelConfig, part: str) -> dict[str, float]:
    """The Fmax (MHz) measured per unit for ``accel``'s Verilog on ``part``: the shipped record overlaid by the
    user's own."""
    fmax = {}
    for folder in (SHIPPED_DIR, clock_dir()):
        path = _path(accel, part, folder)
        if path.is_file():
            fmax.update(json.loads(path.read_text())["fmax_mhz"])
    return fmax


def record(accel: AccelConfig, result: dict) -> Path | None:
    """Keep the per-unit Fmax of a ``hw.synth.synth`` result for ``accel``'s Verilog (merged with earlier runs
    of other units); None when the run placed nothing on an FPGA part."""
    target, part_name = result.get("target"), result.get("part")
    part = next((k for k, (t, name) in FPGA_TARGETS.items() if (t, name) == (target, part_name)), None)
    fmax = {u: r["fmax_mhz"] for u, r in result["units"].items() if r.get("fmax_mhz")}
    if part is None or not fmax:
        return None
    path = _path(accel, part)
    old = json.loads(path.read_text())["fmax_mhz"] if path.is_file() else {}
    data = {"accelerator": accel.name, "part": part_name, "speed": result.get("speed"),
            "lut_mapping": result.get("lut_mapping"), "tools": result.get("tools"), "fmax_mhz": {**old, **fmax}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def clock_status(accel: AccelConfig) -> dict:
    """What ``accel.clock_mhz`` rests on: ``basis`` ("assumed", "measured", "exceeds-fmax", "units-only",
    "unmeasured"),
    the measured Fmax where there is one, and ``warning`` (None when the clock is backed by a measurement
    or declared an assumption)."""
    status = {"mhz": accel.clock_mhz, "target": accel.target, "basis": "assumed", "fmax_mhz": None,
              "limited_by": None, "note": "", "warning": None}
    if accel.target == "asic":
        status["note"] = "assumed (ASIC-style design point; no design has been measured at this clock)"
        return status
    family, part = FPGA_TARGETS[accel.target]
    units = measured(accel, accel.target)
    missing = [u for u in UNITS if u not in units]
    synth = f"ptq2rtl synth --accel {accel.source or accel.name} --target {family} --part {accel.target.split('-')[1]}"
    if missing:
        status.update(basis="unmeasured", note=f"unverified: not measured on {part} for this Verilog", warning=(
            f"{accel.name}: no Fmax measured on {part} for this Verilog's {', '.join(missing)}; "
            f"the {accel.clock_mhz:g} MHz clock is unverified (run `{synth}`)"))
        return status
    if ACCELERATOR in units:
        fmax, by, what = units[ACCELERATOR], ACCELERATOR, "the joined accelerator"
    else:
        by = min(units, key=units.get)
        fmax, what = units[by], f"its units placed alone ({by} the slowest)"
    status.update(fmax_mhz=fmax, limited_by=by)
    if accel.clock_mhz > fmax:
        status.update(basis="exceeds-fmax", note=f"exceeds the {fmax:.1f} MHz measured on {part}", warning=(
            f"{accel.name}: the {accel.clock_mhz:g} MHz clock exceeds the {fmax:.1f} MHz measured for "
            f"{what} on {part}; its latencies assume a clock the design does not meet"))
    elif by != ACCELERATOR:
        status.update(basis="units-only", note=f"at or below the {fmax:.1f} MHz of its units alone on {part}; "
                                               "the joined accelerator not measured", warning=(
            f"{accel.name}: the {accel.clock_mhz:g} MHz clock is below the Fmax of each unit placed alone on "
            f"{part}, but the joined accelerator has not been placed and routed (run `{synth} --unit accelerator`)"))
    else:
        status.update(basis="measured", note=f"at or below the {fmax:.1f} MHz measured for the accelerator on {part}")
    return status
