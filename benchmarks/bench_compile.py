"""Every method's vit-digits program compiled for the joined accelerator and run on its instruction-level model.

For W4A4 on edge-int4 and W8A8 on edge-int8, one row a method: the compiled schedule's cycles (the sum of
``sim.isa.instr_cycles``, which the machine's retired instructions add up to as well), the analytic cycle
model's estimate (``sim.cycles.program_cycles``, batch 1) beside it, the instructions, the DRAM image in
beats, and on how many of the samples the machine's logits are the engine's bit for bit.

With ``--minilm``, also minilm's first encoder layer (``minilm.0``: ``blocks.0.in`` .. ``blocks.0.ln2_out``,
cut out with ``sim.compile.sub_program``) and its whole encoder stack (``minilm.enc``: ``blocks.0.in`` ..
``blocks.5.ln2_out``, all but the embedding lookups and the mean pooling the compiler does not take yet),
their input the engine's ``embed_ln`` of each sentence, for the baseline method, W8A8 on edge-int8 and
W4A4 on edge-int4, at the padded token count of the first ``--samples`` evaluation sentences; agreement
is on the cut's output.

    python benchmarks/bench_compile.py [--samples 16] [--methods baseline repq ...] [--minilm]
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
from sim.compile import compile_program, sub_program
from sim.cycles import program_cycles

SETTINGS = ((4, "edge-int4"), (8, "edge-int8"))


def row(program, accel, inputs: dict, samples: int, seq_len: int | None = None) -> dict:
    """The compiled schedule of ``program`` on ``accel`` and the machine against the engine on ``samples``."""
    compiled = compile_program(program, accel, seq_len=seq_len)
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
    model = program_cycles(program, accel, batch=1, seq_len=seq_len or 128).cycles
    return {"cycles": total, "model": model, "instrs": len(compiled.instrs), "beats": compiled.n_beats,
            "agree": agree, "samples": samples, "s_per_sample": seconds}


def minilm_cuts(bits: int, samples: int):
    """minilm's first encoder layer and its encoder stack as programs, their inputs for ``samples``
    sentences, and the sentences' padded token count."""
    program, _ = flows.quantize("minilm", "baseline", bits, bits, progress=False)
    names = [op.name for op in program.ops]
    first = names.index("blocks.0.in")
    cuts = {f"minilm.{cut}": sub_program(program, names[first:names.index(last) + 1])
            for cut, last in (("0", "blocks.0.ln2_out"), ("enc", "blocks.5.ln2_out"))}
    batch, _ = next(iter_batches("minilm", "eval", samples))
    inputs = program_inputs(program, batch)
    embed = engine.run(program, inputs, keep=["embed_ln"]).outputs["embed_ln"]
    return cuts, {"embed_ln": embed, "attention_mask": inputs["attention_mask"]}, inputs["attention_mask"].shape[1]


def show(scheme: str, config: str, name: str, r: dict) -> None:
    print(f"{scheme:<6} {config:<10} {name:<14} {r['cycles']:>9} {r['model']:>9} {r['cycles'] / r['model']:>6.2f} "
          f"{r['instrs']:>6} {r['beats']:>7} {r['agree']:>3}/{r['samples']:<3} {r['s_per_sample']:>8.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--methods", nargs="+", default=method_names())
    ap.add_argument("--minilm", action="store_true", help="also minilm's first encoder layer (baseline)")
    args = ap.parse_args()
    images = next(iter_batches("vit-digits", "eval", args.samples))[0]
    spec = flows.load_spec("vit-digits")
    print(f"{'scheme':<6} {'accel':<10} {'method':<14} {'cycles':>9} {'model':>9} {'ratio':>6} {'instrs':>6} "
          f"{'beats':>7} {'agree':>7} {'s/sample':>8}")
    for bits, config in SETTINGS:
        accel = load_accel(config)
        for method in args.methods:
            program, _ = flows.quantize("vit-digits", method, bits, bits, progress=False, spec=spec)
            show(f"W{bits}A{bits}", config, method, row(program, accel, program_inputs(program, images), len(images)))
    for bits, config in SETTINGS[::-1] if args.minilm else ():
        cuts, inputs, tokens = minilm_cuts(bits, args.samples)
        for name, cut in cuts.items():
            show(f"W{bits}A{bits}", config, f"{name}@{tokens}",
                 row(cut, load_accel(config), inputs, args.samples, seq_len=tokens))


if __name__ == "__main__":
    main()
