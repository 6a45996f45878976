"""Throughput of the bit-exact golden engine against the FP32 PyTorch forward of the same model.

Same model, same batch, same process: deit_small_patch16_224 (random weights;
timing does not depend on them), batch 8, at W8A8 and W4A4. The repeats take
turns (FP32, W8A8, W4A4, FP32, ...) so that a machine shared with other jobs
loads every side alike; each side is reported as its best repeat, in seconds
per batch, with the engine / FP32 throughput ratio. Every engine repeat must
give the same bits as the first.

    python benchmarks/bench_engine.py [--model deit_small_patch16_224] [--batch 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import timm
import torch

from quant.lower import lower
from quant.methods import get_method
from quant.model import adapt
from quant.quantizers import program_inputs
from sim import engine


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    x = torch.randn(args.batch, 3, 224, 224)
    spec = adapt(model, args.model, "vit")
    programs = {}
    for wbits, abits in ((8, 8), (4, 4)):
        plan = get_method("baseline")(spec, [(x, None)], wbits, abits, progress=False)
        program = lower(plan)
        programs[f"W{wbits}A{abits}"] = (program, program_inputs(program, x))
    load = os.getloadavg()[0]
    best: dict[str, float] = {}
    first: dict[str, dict[str, np.ndarray]] = {}
    with torch.no_grad():
        model(x)  # warm-up, as the engine's first repeat warms its own caches
        for _ in range(args.repeat):
            t, _ = timed(lambda: model(x))
            best["FP32"] = min(best.get("FP32", t), t)
            for name, (program, ints) in programs.items():
                t, res = timed(lambda: engine.run(program, ints))
                best[name] = min(best.get(name, t), t)
                outs = first.setdefault(name, res.outputs)
                assert all(np.array_equal(outs[k], res.outputs[k]) for k in outs), f"{name}: repeats differ"
    print(f"{args.model}, batch {args.batch}, torch threads {torch.get_num_threads()}, "
          f"best of {args.repeat}, load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"  FP32 PyTorch forward   {best['FP32']:7.3f} s/batch")
    for name in programs:
        print(f"  golden engine {name}    {best[name]:7.3f} s/batch   engine/FP32 throughput = {best['FP32'] / best[name]:.2f}x")


if __name__ == "__main__":
    main()
