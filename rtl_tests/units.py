"""The RTL units the benches know, by bench name: component class and vector generator."""

from __future__ import annotations

import json
import os

from hw.gelu import Gelu
from hw.layernorm import LayerNorm
from hw.mac_array import MacArray
from hw.requant import Requantizer
from hw.softmax import SoftmaxLog2
from rtl_tests import vectors
from sim.accel import CONFIG_DIR, UNIT_PARAMS, load_accel

UNITS = {
    "requant": (Requantizer, vectors.requant_vectors),
    "gelu": (Gelu, vectors.gelu_vectors),
    "mac_array": (MacArray, vectors.mac_array_vectors),
    "softmax": (SoftmaxLog2, vectors.softmax_vectors),
    "layernorm": (LayerNorm, vectors.layernorm_vectors),
}

#: the configurations every regression runs on random and corner vectors: small, fast, parameterized
CONFIGS = {
    "requant": {
        "dyadic-16b": dict(in_bits=32, out_bits=16, mult_bits=16, lanes=4, channels=16),
        "pow2-8b": dict(in_bits=32, out_bits=8, lanes=2, channels=16, pow2=True, latency=7),
    },
    "gelu": {"int8-x4": dict(in_bits=8, out_bits=8, lanes=4, latency=2),
             "int8-o16-x4": dict(in_bits=8, out_bits=16, lanes=4, latency=2)},  # the edge configs: 16-bit entries
    "mac_array": {
        "int4-4x4": dict(rows=4, cols=4, act_bits=4, weight_bits=4, max_m=32),
        "int8-8x4": dict(rows=8, cols=4, act_bits=8, weight_bits=8, max_m=32),
    },
    "softmax": {
        "x2-len64": dict(in_bits=16, max_len=64, lanes=2),
        "x1-len32-lat11": dict(in_bits=16, max_len=32, lanes=1, latency=11),
    },
    "layernorm": {
        "x4-n64-k2-lat64": dict(in_bits=16, out_bits=8, max_n=64, lanes=4, steps_per_cycle=2, latency=64),
        "x1-n32-k1": dict(in_bits=16, out_bits=16, max_n=32, lanes=1),
    },
}


def _exported() -> dict[str, dict[str, tuple[str, ...]]]:
    """unit -> {size label: the bundled accelerator descriptions whose ``ptq2rtl verilog`` builds it so}.

    Each unit's parameters are ``sim.accel.UNIT_PARAMS[unit](load_accel(name))``, what ``from_accel``
    builds for ``ptq2rtl verilog``; descriptions giving a unit the same parameters share one entry,
    labelled with all their names."""
    names = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
    accels = {name: load_accel(name) for name in names}
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for unit in UNITS:
        groups: dict[str, list[str]] = {}
        for name, accel in accels.items():
            groups.setdefault(json.dumps(UNIT_PARAMS[unit](accel), sort_keys=True), []).append(name)
        out[unit] = {"+".join(group): tuple(group) for group in groups.values()}
    return out


#: the sizes the bundled accelerator descriptions export (``ptq2rtl verilog --accel NAME``), deduplicated:
#: unit -> {label: accelerator names}; run on Verilator with random and corner vectors sized to them
EXPORTED = _exported()
#: exported sizes only the full regression runs (``PTQ2RTL_FULL=1``, ``python -m rtl_tests.regress --full``):
#: the rest, every unit at edge-int4's size, is the slice the default test run keeps. From cold Verilator builds
#: on two shared cores: the slice 204 s, edge-int8's array 62 s more; edge-int8 differs in the array's operands
FULL_ONLY = {("mac_array", "edge-int8")}
FULL_ENV = "PTQ2RTL_FULL"


def full_default() -> bool:
    """Whether a run includes the full regression's sizes unless told (``PTQ2RTL_FULL`` set to 1)."""
    return os.environ.get(FULL_ENV, "") == "1"


def exported(unit: str, full: bool) -> list[str]:
    """The exported sizes of ``unit`` a run covers: all with ``full``, else those outside :data:`FULL_ONLY`."""
    return [label for label in EXPORTED[unit] if full or (unit, label) not in FULL_ONLY]


def exported_cases(unit: str) -> list:
    """pytest parameters of ``unit``'s exported sizes, those of the full regression skipped unless it is on."""
    import pytest

    skip = pytest.mark.skipif(not full_default(), reason=f"the full regression only ({FULL_ENV}=1)")
    return [pytest.param(label, marks=[skip] if (unit, label) in FULL_ONLY else []) for label in EXPORTED[unit]]


def build(unit: str, config: str):
    """The component of bench configuration ``config``: a key of ``CONFIGS[unit]`` or of ``EXPORTED[unit]``
    (then exactly what ``ptq2rtl verilog --accel NAME`` exports for its first accelerator)."""
    if config in CONFIGS[unit]:
        return UNITS[unit][0](**CONFIGS[unit][config])
    if config in EXPORTED[unit]:
        from hw.verilog import units_from_accel

        return units_from_accel(EXPORTED[unit][config][0], [unit])[unit]
    known = ", ".join(list(CONFIGS[unit]) + list(EXPORTED[unit]))
    raise ValueError(f"unknown {unit} configuration {config!r} (accepted: {known})")


def size(unit: str, p: dict) -> str:
    """The size of a unit built with parameters ``p``, in a few words."""
    if unit == "mac_array":
        return (f"{p['rows']}x{p['cols']} int{p['act_bits']}xint{p['weight_bits']}, m<={p['max_m']}, "
                f"k<={p['max_k']}{', log2' if p['log2'] else ''}")
    if unit == "requant":
        return (f"{p['lanes']} lanes, {p['channels']} channels, int{p['in_bits']}->int{p['out_bits']}, "
                + ("pow2" if p["pow2"] else f"M {p['mult_bits']}b"))
    if unit == "softmax":
        return f"{p['lanes']} lanes, rows<={p['max_len']}, latency {p['latency']}"
    if unit == "gelu":
        return f"{p['lanes']} lanes, {1 << p['in_bits']} x int{p['out_bits']} table"
    if unit == "layernorm":
        return (f"{p['lanes']} lanes, n<={p['max_n']}, int{p['out_bits']} out, "
                f"{p['steps_per_cycle']} steps/cycle, latency {p['latency']}")
    raise ValueError(f"unknown unit {unit!r} (accepted: {', '.join(UNITS)})")


def run_config(unit: str, config: str, sim: str) -> dict:
    """One bench: ``unit`` built as configuration ``config`` (:func:`build`) on random and corner vectors."""
    from rtl_tests import harness

    dut = build(unit, config)
    p = dut.params
    return harness.run_bench(unit, dut, p, UNITS[unit][1](p), sim, tag=config)


def run_trace(unit: str, path, sim: str) -> dict:
    """One bench replaying a trace file (``rtl_tests.traces``) on a unit sized for it."""
    from rtl_tests import harness, traces

    v = traces.load(path)
    cls, _ = UNITS[unit]
    dut = cls(**traces.unit_for(unit, v))
    p = dut.params
    return harness.run_bench(unit, dut, p, v, sim, tag=f"trace-{path.parent.name}")
