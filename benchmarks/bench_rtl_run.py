"""Whole vit-digits programs on the accelerator RTL: every registered method, W4A4 on edge-int4 and W8A8
on edge-int8, 16 evaluation samples each, through ``ptq2rtl rtl-run`` (sim.compile -> Verilator build of
hw.accelerator -> outputs against sim.engine, cycles against sim.isa.instr_cycles and simulate).

    python benchmarks/bench_rtl_run.py [--programs DIR] [--samples 16] [--methods baseline repq ...] [--json]

``--programs DIR`` reads ``DIR/<method>-w<bits>.safetensors`` where present (else quantizes and writes
them there), so a re-run skips calibration.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ptq2rtl import flows
from ptq2rtl.rtl_run import rtl_run
from quant.methods import method_names
from sim.accel import load_accel
from sim.program import IntegerProgram

RUNS = (("edge-int4", 4), ("edge-int8", 8))


def _program(method: str, bits: int, folder: Path | None, spec):
    path = folder / f"{method}-w{bits}.safetensors" if folder else None
    if path is not None and path.is_file():
        return IntegerProgram.load(path)
    program, _ = flows.quantize("vit-digits", method, bits, bits, progress=False, spec=spec)
    if path is not None:
        program.save(path)
    return program


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", type=Path)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--methods", nargs="*", default=method_names())
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.programs:
        args.programs.mkdir(parents=True, exist_ok=True)
    spec = flows.load_spec("vit-digits")
    rows = []
    print(f"{'method':<9s} {'accel':<10s} {'instr':>6s} {'bit-exact':>10s} {'RTL cycles':>11s} {'simulate':>10s} "
          f"{'cycle-exact':>12s} {'sim s':>7s}")
    for method in args.methods:
        for accel, bits in RUNS:
            r = rtl_run(_program(method, bits, args.programs, spec), load_accel(accel), samples=args.samples)
            rows.append(r)
            cyc = "/".join(f"{c:,}" for c in sorted(set(r["rtl_cycles"])))
            print(f"{method:<9s} {accel:<10s} {r['instructions']:>6d} {r['bit_exact_samples']:>5d}/{r['samples']:<4d} "
                  f"{cyc:>11s} {r['simulate_cycles']:>10,} {r['cycle_exact_samples']:>6d}/{r['samples']:<5d} "
                  f"{r['sim_s']:>7.1f}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    if not all(r["ok"] for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
