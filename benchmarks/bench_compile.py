"""Every method's vit-digits program compiled for the joined accelerator and run on its instruction-level model.

For W4A4 on edge-int4 and W8A8 on edge-int8, one row a method: the compiled schedule's cycles (the sum of
``sim.isa.instr_cycles``, which the machine's retired instructions add up to as well), the analytic cycle
model's estimate (``sim.cycles.program_cycles``, batch 1) beside it, the instructions, the DRAM image in
beats, and on how many of the samples the machine's logits are the engine's bit for bit.

    python benchmarks/bench_compile.py [--samples 16] [--methods baseline repq ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ptq2rtl import flows
from ptq2rtl.models import iter_batches
from quant.methods import method_names
from quant.quantizers import program_inputs
from sim import engine, machine
from sim.accel import load_accel
from sim.compile import compile_program
from sim.cycles import program_cycles

SETTINGS = ((4, "edge-int4"), (8, "edge-int8"))


def row(program, accel, images, samples: int) -> dict:
    """The compiled schedule of ``program`` on ``accel`` and the machine against the engine on ``samples``."""
    compiled = compile_program(program, accel)
    inputs = program_inputs(program, images)
    want = engine.run(program, inputs).outputs
    start = time.perf_counter()
    agree, machine_cycles = 0, set()
    for s in range(samples):
        run = machine.run(compiled.image({k: v[s] for k, v in inputs.items()}), accel)
        got = compiled.outputs(run.image)
        agree += all(np.array_equal(got[n], want[n][s]) for n in program.outputs)
        machine_cycles.add(run.cycles)
    seconds = (time.perf_counter() - start) / samples
    total = compiled.cycles(accel).total
    assert machine_cycles == {total}, (machine_cycles, total)
    return {"cycles": total, "model": program_cycles(program, accel, batch=1).cycles, "instrs": len(compiled.instrs),
            "beats": compiled.n_beats, "agree": agree, "s_per_sample": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--methods", nargs="+", default=method_names())
    args = ap.parse_args()
    images = next(iter_batches("vit-digits", "eval", args.samples))[0]
    spec = flows.load_transformer("vit-digits")
    print(f"{'scheme':<6} {'accel':<10} {'method':<9} {'cycles':>9} {'model':>9} {'ratio':>6} {'instrs':>6} "
          f"{'beats':>7} {'agree':>7} {'s/sample':>8}")
    for bits, config in SETTINGS:
        accel = load_accel(config)
        for method in args.methods:
            program, _ = flows.quantize("vit-digits", method, bits, bits, progress=False, spec=spec)
            r = row(program, accel, images, len(images))
            print(f"W{bits}A{bits:<3} {config:<10} {method:<9} {r['cycles']:>9} {r['model']:>9} "
                  f"{r['cycles'] / r['model']:>6.2f} {r['instrs']:>6} {r['beats']:>7} "
                  f"{r['agree']:>3}/{len(images):<3} {r['s_per_sample']:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
