"""Throughput of the bit-exact golden engine against the FP32 PyTorch forward of the same model.

Same model, same batch, same process: deit_small_patch16_224 (random weights;
timing does not depend on them), batch 8, at W8A8 and W4A4. Prints seconds per
batch (best of --repeat runs) and the engine / FP32 throughput ratio.

    python benchmarks/bench_engine.py [--model deit_small_patch16_224] [--batch 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

from quant.lower import lower
from quant.methods import get_method
from quant.model import adapt
from quant.quantizers import program_inputs
from sim import engine


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    x = torch.randn(args.batch, 3, 224, 224)
    with torch.no_grad():
        fp32 = best_of(lambda: model(x), args.repeat)
    print(f"{args.model}, batch {args.batch}, torch threads {torch.get_num_threads()}")
    print(f"  FP32 PyTorch forward   {fp32:7.3f} s/batch")
    spec = adapt(model, args.model, "vit")
    for wbits, abits in ((8, 8), (4, 4)):
        plan = get_method("baseline")(spec, [(x, None)], wbits, abits, progress=False)
        program = lower(plan)
        ints = program_inputs(program, x)
        t = best_of(lambda: engine.run(program, ints), args.repeat)
        print(f"  golden engine W{wbits}A{abits}    {t:7.3f} s/batch   engine/FP32 throughput = {fp32 / t:.2f}x")


if __name__ == "__main__":
    main()
