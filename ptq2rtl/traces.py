"""Trace files for the RTL benches: quantize a model, trace a few samples through the golden engine.

``python -m ptq2rtl.traces vit-digits minilm`` quantizes each model (W4A4 by
default), runs a few evaluation samples through ``sim.engine.run`` with
``trace_samples``, and writes the vectors ``rtl_tests.traces.extract`` cuts
from every op's recorded integer inputs: one ``<unit>.npz`` per unit under
``rtl_tests/data/traces/<model>-<method>-w<W>a<A>/``. Extraction checks the
traced outputs against ``sim.intops``, so a trace file that disagrees with
the engine is never written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ptq2rtl import flows, models
from quant.quantizers import program_inputs
from rtl_tests.traces import TRACE_DIR, extract
from sim import engine


def build(model: str, method: str = "baseline", wbits: int = 4, abits: int = 4, samples: int = 2,
          out_dir: Path = TRACE_DIR) -> list[Path]:
    """Quantize ``model``, trace ``samples`` evaluation inputs through the engine, write one npz per unit."""
    program, _ = flows.quantize(model, method, wbits, abits, progress=False)
    batch, _ = next(iter(models.iter_batches(model, "eval", samples)))
    result = engine.run(program, program_inputs(program, batch), trace_samples=list(range(samples)))
    tag = f"{model}-{method}-w{wbits}a{abits}"
    written = []
    for unit, v in extract(program, result.trace, tag).items():
        path = out_dir / tag / f"{unit}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **v)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ptq2rtl.traces", description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--method", default="baseline")
    ap.add_argument("--wbits", type=int, default=4)
    ap.add_argument("--abits", type=int, default=4)
    args = ap.parse_args(argv)
    for model in args.models:
        for path in build(model, args.method, args.wbits, args.abits):
            print(path.relative_to(TRACE_DIR.parent.parent.parent), f"{path.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
