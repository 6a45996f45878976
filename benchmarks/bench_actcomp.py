"""Activation compression on the CNNs: baseline, actcomp-mpdr and actcomp-cap at W8A8 and W4A4.

One row a model, width and method: the integer program's top-1 (cnn-digits: on its labelled evaluation
split; efficientnet-lite0: agreement with FP32 on the photograph crops) and its drop from the baseline,
bits per activation value, the activation bytes the program stores and the activation bytes it moves
to and from DRAM (each with its ratio to the baseline's), cycles and energy of one image on edge-int8
(W8A8) or edge-int4 (W4A4), and the calibration time.

Costs come from the analytic model (``sim.cycles.program_cycles``) for every row alike: the compiler does
not take the compressed programs (packing, the fused projection), so a baseline priced from a compiled
schedule would not compare. Bits per value: the bits a program stores of its activations over the
number of activation values the *baseline* stores (a projection stores fewer values, not narrower ones).

With ``--frontier``, the methods also run at a looser and a tighter error bound (``max_error``): the
trade of traffic against accuracy around the default.

    python benchmarks/bench_actcomp.py [--models cnn-digits efficientnet-lite0] [--bits 8 4] [--limit N]
        [--frontier] [--calib real|zeroq|dsg] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time

from ptq2rtl import flows
from quant import actcomp, cnn
from sim.accel import load_accel
from sim.cycles import program_cycles
from sim.energy import program_energy

ACCEL = {8: "edge-int8", 4: "edge-int4"}
ACTCOMP = ("actcomp-mpdr", "actcomp-cap")
METHODS = ("baseline",) + ACTCOMP  #: --methods also takes the other CNN methods (quant.cnn.METHODS), e.g. apq
FRONTIER = (0.005, 0.05)  #: error bounds beside the default (actcomp.MAX_ERROR)


def measure(name: str, spec, batches, method: str, bits: int, limit: int | None, **options) -> dict:
    start = time.perf_counter()
    plan = cnn.calibrate(spec.copy(), method, batches, bits, bits, progress=False, **options)
    calib_s = time.perf_counter() - start
    plan.meta["model"] = name
    program = cnn.lower(plan)
    accel = load_accel(ACCEL[bits])
    cost = program_cycles(program, accel)
    result = flows.evaluate_program(program, limit=limit, progress=False)
    return {"model": name, "method": method, "bits": bits, "max_error": options.get("max_error"),
            "top1": result["top1"], "n": result["n"], "stored_bytes": cost.activation.stored_bytes,
            "values": cost.activation.values, "act_dram_bytes": cost.activation.dram_bytes,
            "cycles": cost.cycles, "energy_uj": program_energy(cost, accel).total_j * 1e6, "accel": accel.name,
            "calib_s": calib_s, "meta": plan.meta.get("actcomp")}


def table(rows: list[dict]) -> str:
    head = (f"{'model':18s} {'bits':5s} {'method':13s} {'bound':>6s} {'top1 %':>7s} {'drop':>6s} {'bits/val':>8s} "
            f"{'act stored B':>13s} {'x':>5s} {'act DRAM B':>11s} {'x':>5s} {'cycles':>10s} {'energy uJ':>10s} "
            f"{'calib s':>8s}")
    lines = [head, "-" * len(head)]
    base = {}
    for r in rows:
        key = (r["model"], r["bits"])
        if r["method"] == "baseline":
            base[key] = r
        b = base[key]
        bound = "" if r["max_error"] is None else f"{r['max_error']:g}"
        if r["method"] in ACTCOMP and r["max_error"] is None:
            bound = f"{actcomp.MAX_ERROR:g}"
        lines.append(
            f"{r['model']:18s} W{r['bits']}A{r['bits']} {r['method']:13s} {bound:>6s} {r['top1']:7.2f} "
            f"{b['top1'] - r['top1']:6.2f} {8 * r['stored_bytes'] / b['values']:8.2f} {r['stored_bytes']:13,d} "
            f"{b['stored_bytes'] / r['stored_bytes']:5.2f} {r['act_dram_bytes']:11,d} "
            f"{b['act_dram_bytes'] / r['act_dram_bytes']:5.2f} {r['cycles']:10,d} {r['energy_uj']:10.2f} "
            f"{r['calib_s']:8.1f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["cnn-digits", "efficientnet-lite0"])
    ap.add_argument("--bits", nargs="+", type=int, default=[8, 4])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--limit", type=int, default=None, help="evaluate on the first N images")
    ap.add_argument("--frontier", action="store_true", help="also run at the error bounds in FRONTIER")
    ap.add_argument("--calib", default="real", choices=flows.CALIB_SOURCES)
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args()
    rows = []
    for name in args.models:
        spec = flows.load_spec(name)
        batches = flows.calibration_batches(name, calib=args.calib, progress=False)
        for bits in args.bits:
            for method in ["baseline"] + [m for m in args.methods if m != "baseline"]:
                bounds = [None] + (list(FRONTIER) if args.frontier and method in ACTCOMP else [])
                for bound in bounds:
                    options = {} if bound is None else {"max_error": bound}
                    rows.append(measure(name, spec, batches, method, bits, args.limit, **options))
                    print(table(rows).splitlines()[-1], flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(rows, f, indent=1)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
