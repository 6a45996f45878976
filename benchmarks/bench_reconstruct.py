"""Block reconstruction's schedules on one model: the metric each gives and what it costs.

Every row calibrates the same RepQ plan at WnAn (``quant.methods.repq``), reconstructs it with one
``quant.reconstruct.Schedule`` (the row's name says which), lowers it and evaluates the program on the
golden engine (integer protocol) on the first ``--limit`` evaluation samples; ``aocq`` rows run that
method whole (balancing, then its schedule). One torch thread, as the report's workers run.

    python benchmarks/bench_reconstruct.py [--model minilm] [--bits 4] [--limit 200] [--rows plain,round ...]
"""

from __future__ import annotations

import argparse
import time

import torch

from ptq2rtl import flows
from quant.lower import lower
from quant.methods import aocq
from quant.reconstruct import Schedule, reconstruct

#: the rows as the README quotes them: 32-sample steps (``Schedule``'s default is 16 since the main job needed it)
ROWS = {
    "plain": None,  # RepQ alone
    "round-1e-2-x100": Schedule(iters=100, batch=32, lr_round=1e-2),
    "round-3e-2-x100": Schedule(iters=100, batch=32, lr_round=3e-2),
    "round+steps-5e-4": Schedule(iters=100, batch=32, lr_round=3e-2, lr_scale=5e-4),
    "decline-8-6": Schedule(iters=100, batch=32, lr_round=1e-2, decline=(8, 6)),
    "aocq": "aocq",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    args = ap.parse_args()
    torch.set_num_threads(1)
    batches = flows.calibration_batches(args.model)
    metric = "cosine" if args.model != "vit-digits" else "top1"
    print(f"| row | {metric} | nn_agreement | calibration + reconstruction (s) |\n|---|---:|---:|---:|")
    for row in args.rows.split(","):
        schedule = ROWS[row]
        start = time.perf_counter()
        method = "aocq" if schedule == "aocq" else "repq"
        plan = flows.make_plan(args.model, method, args.bits, args.bits, progress=False, batches=batches)
        if isinstance(schedule, Schedule):
            reconstruct(plan, batches, schedule, progress=False)
        seconds = time.perf_counter() - start
        result = flows.evaluate_program(lower(plan), limit=args.limit, progress=False)
        print(f"| {row} | {result[metric]:.4f} | {result.get('nn_agreement', float('nan')):.3f} | {seconds:.1f} |",
              flush=True)
    print(f"({args.model} W{args.bits}A{args.bits}, integer protocol, first {args.limit} evaluation samples; "
          f"aocq's schedule: {aocq.SCHEDULE})")


if __name__ == "__main__":
    main()
