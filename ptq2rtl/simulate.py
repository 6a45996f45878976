"""``ptq2rtl simulate``: a program on an accelerator -> cycles, latency, energy, utilization, per op and per layer."""

from __future__ import annotations

from pathlib import Path

from ptq2rtl.clocks import clock_status
from sim.accel import AccelConfig, AccelError, check_program, load_accel
from sim.cycles import CycleReport, program_cycles, utilization
from sim.energy import program_energy
from sim.program import IntegerProgram


def simulate_report(program: IntegerProgram | str | Path, accel: AccelConfig | str | Path, *, batch: int = 1,
                    seq_len: int = 128) -> dict:
    """The cost of one inference of ``batch`` samples as a JSON-ready dict.

    ``program``: an IntegerProgram or its file; ``accel``: an AccelConfig, a
    bundled name ("edge-int4") or a YAML path; ``seq_len``: tokens of a text
    program (ignored by programs with fixed shapes).
    """
    if not isinstance(program, IntegerProgram):
        program = IntegerProgram.load(program)
    if not isinstance(accel, AccelConfig):
        accel = load_accel(accel)
    cost, basis = program_cost(program, accel, batch=batch, seq_len=seq_len)
    energy = program_energy(cost, accel)
    clock = accel.clock_mhz * 1e6
    total_j = energy.total_j
    layer_j: dict[str, float] = {}
    for o in cost.ops:
        layer_j[o.layer] = layer_j.get(o.layer, 0.0) + energy.per_op_j[o.name]
    arr = accel.array
    return {
        "model": program.model,
        "accel": accel.name,
        "array": f"{arr.rows}x{arr.cols} int{arr.weight_bits}xint{arr.act_bits} {arr.dataflow}",
        "wbits": program.meta.get("wbits"),
        "abits": program.meta.get("abits"),
        "batch": batch,
        "seq_len": cost.seq_len,
        "clock_mhz": accel.clock_mhz,
        "clock": clock_status(accel),
        "basis": basis,
        "cycles": cost.cycles,
        "latency_s": cost.latency_s,
        "energy_j": total_j,
        "utilization": cost.utilization,
        "macs": cost.macs,
        "array_macs": cost.array_macs,
        # two operations a MAC; per watt from the energy model (its preset names the technology)
        "gops": 2 * cost.macs / cost.latency_s / 1e9 if cost.latency_s else 0.0,
        "peak_gops": 2 * arr.rows * arr.cols * clock / 1e9,
        "gops_per_w": 2 * cost.macs / total_j / 1e9 if total_j else 0.0,
        "stall_cycles": cost.stall_cycles,
        "dram_bytes": cost.dram_bytes,
        "compulsory_dram_bytes": cost.compulsory_dram_bytes,
        "energy_preset": energy.preset,
        "energy_citation": energy.citation,
        "energy_breakdown_j": energy.breakdown_j,
        "largest_energy": [{"key": k, "energy_j": v, "share": v / total_j if total_j else 0.0}
                           for k, v in energy.largest(3)],
        "layers": [{"name": l.name, "cycles": l.cycles, "latency_s": l.cycles / clock, "energy_j": layer_j[l.name],
                    "macs": l.macs, "utilization": l.macs / (cost.pes * l.cycles) if l.cycles else 0.0,
                    "dram_bytes": l.dram_bytes} for l in cost.layers()],
        "ops": [_op_row(o, cost, energy.per_op_j[o.name]) for o in cost.ops],
    }


def program_cost(program: IntegerProgram, accel: AccelConfig, *, batch: int = 1,
                 seq_len: int = 128) -> tuple[CycleReport, dict]:
    """The cycles and energy actions of ``program`` on ``accel`` and what they rest on.

    A program the compiler takes is priced from its instruction stream (``sim.schedule``: the cycles the
    accelerator RTL executes, samples one after the other); one it does not take yet is estimated by the
    analytic model (``sim.cycles``) and says why. A program the hardware cannot run is refused either way.
    """
    from sim.compile import compile_program
    from sim.schedule import schedule_report

    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch ({batch}) and seq_len ({seq_len}) must be at least 1")
    check_program(program, accel, seq_len)
    try:
        compiled = compile_program(program, accel, seq_len=seq_len)
    except AccelError as exc:
        return (program_cycles(program, accel, batch=batch, seq_len=seq_len),
                {"kind": "estimate", "note": f"analytic estimate (sim.cycles): the compiler does not take this "
                                             f"program: {exc}"})
    return (schedule_report(program, accel, compiled.instrs, batch=batch, seq_len=seq_len),
            {"kind": "schedule", "instructions": len(compiled.instrs),
             "note": f"the compiled schedule ({len(compiled.instrs)} instructions): the cycles the accelerator "
                     f"RTL executes"})


def _op_row(o, cost: CycleReport, energy_j: float) -> dict:
    return {"name": o.name, "kind": o.kind, "layer": o.layer, "unit": o.unit, "macs": o.macs,
            "array_macs": o.array_macs, "compute_cycles": o.compute_cycles, "stall_cycles": o.stall_cycles,
            "cycles": o.cycles, "dram_bytes": o.dram_bytes, "utilization": utilization(o, cost.pes),
            "energy_j": energy_j, "fused_into": o.fused_into, "actions": dict(o.actions)}


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n"),
                          (1e-12, "p")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"0 {unit}"


def format_table(report: dict) -> str:
    """A readable summary: totals, then per layer, then the energy breakdown."""
    r = report
    seq = f", {r['seq_len']} tokens" if r["seq_len"] else ""
    lines = [
        f"{r['model']} on {r['accel']} ({r['array']}, {r['clock_mhz']:g} MHz), batch {r['batch']}{seq}",
        f"clock {r['clock_mhz']:g} MHz: {r['clock']['note']}",
        f"cycles: {r['basis']['note']}",
        f"latency {_si(r['latency_s'], 's')} ({r['cycles']:,} cycles, {r['stall_cycles']:,} waiting on DRAM), "
        f"energy {_si(r['energy_j'], 'J')}, array utilization {100 * r['utilization']:.1f} %",
        f"MACs {_si(r['macs'], '')} (array {_si(r['array_macs'], '')}), DRAM {_si(r['dram_bytes'], 'B')} "
        f"(compulsory {_si(r['compulsory_dram_bytes'], 'B')})",
        f"throughput {r['gops']:.3g} GOPS of {r['peak_gops']:.3g} peak at {r['clock_mhz']:g} MHz "
        f"(2 ops a MAC), {r['gops_per_w']:.3g} GOPS/W ({r['energy_preset']} energy model)",
        "",
        f"{'layer':<16s} {'cycles':>12s} {'latency':>10s} {'energy':>10s} {'MACs':>9s} {'util %':>7s}",
    ]
    for l in r["layers"]:
        lines.append(f"{l['name']:<16s} {l['cycles']:>12,} {_si(l['latency_s'], 's'):>10s} "
                     f"{_si(l['energy_j'], 'J'):>10s} {_si(l['macs'], ''):>9s} {100 * l['utilization']:>7.1f}")
    lines += ["", f"energy breakdown ({r['energy_preset']})"]
    total = r["energy_j"] or 1.0
    for key, j in sorted(r["energy_breakdown_j"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {key:<24s} {_si(j, 'J'):>10s} {100 * j / total:6.1f} %")
    return "\n".join(lines)
