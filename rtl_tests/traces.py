"""Bench vectors replayed from real programs: the golden engine's traces of quantized models.

:func:`extract` turns every traced op's recorded integer inputs (and the op's
own tables) into the vectors of the unit that runs it, sampled down to a
bench-sized set, in exactly the format the random generators of
``rtl_tests.vectors`` use; ``python -m ptq2rtl.traces`` writes them as one
``<unit>.npz`` per program under ``rtl_tests/data/traces/``. The benches
compute the expected outputs with ``sim.intops`` themselves; the traced
outputs are checked against that here, so a trace file that disagrees with
the engine is never written.

:func:`unit_for` sizes a unit that can replay a trace file (enough channels,
a long enough row, wide enough operands).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtl_tests import vectors as vec
from sim import widths
from sim.ops import OPS, TRACE_GEMM_ROWS

TRACE_DIR = Path(__file__).resolve().parent / "data" / "traces"
UNITS = ("requant", "gelu", "softmax", "layernorm", "mac_array")


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def _bits(a: np.ndarray) -> int:
    """The narrowest signed width holding every value of ``a``."""
    lo, hi = int(a.min(initial=0)), int(a.max(initial=0))
    b = 2
    while not (-(1 << (b - 1)) <= lo and hi < (1 << (b - 1))):
        b += 1
    return b


SEGMENTS = {"requant": vec.requant_segment, "gelu": vec.gelu_segment, "softmax": vec.softmax_segment,
            "layernorm": vec.layernorm_segment, "mac_array": vec.gemm_case}  #: bench -> its segment builder


def extract(program, trace: dict, tag: str, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per unit, the vectors of every traced op it runs (source ``trace:<tag>``).

    Each op kind cuts its own trace (``sim.ops.OpKind.trace``) and names the bench it feeds.
    """
    rng = np.random.default_rng(seed)
    src = f"trace:{tag}"
    parts: dict[str, list] = {u: [] for u in UNITS}
    for op in program.ops:
        kind = OPS[op.kind]
        if op.name not in trace or kind.bench is None:
            continue
        cut = kind.trace(op, trace[op.name]["inputs"], trace[op.name]["outputs"], rng)
        parts[kind.bench].append(SEGMENTS[kind.bench](**cut, op=op.name, source=src))
    if parts["requant"]:  # one table size for the file: pad every op's table to the widest
        width = max(seg["seg_m"].shape[1] for seg in parts["requant"])
        for seg in parts["requant"]:
            for key in ("seg_m", "seg_shift", "seg_zp"):
                seg[key] = np.pad(seg[key], ((0, 0), (0, width - seg[key].shape[1])))
    return {u: vec.merge(*segs) for u, segs in parts.items() if segs}


def unit_for(unit: str, v: dict[str, np.ndarray]) -> dict:
    """Constructor arguments of a unit that can replay the trace vectors ``v``.

    Sizes are fixed where the bundled traces allow (so every trace file of a unit, and the GELU
    and softmax bench configurations, share one simulator build) and grow only for bigger traces.
    """
    if unit == "requant":  # a program with only power-of-two multipliers runs on the shifter-only unit
        m = v["seg_m"][v["seg_m"] > 0]  # zeros pad the tables of narrower ops
        return dict(in_bits=widths.ACC_BITS, out_bits=widths.RESIDUAL_BITS, mult_bits=widths.REQUANT_M_BITS,
                    lanes=4, pow2=bool(np.all(m & (m - 1) == 0)), channels=max(2048, _pow2_at_least(v["seg_m"].shape[1])))
    if unit == "gelu":
        return dict(in_bits=widths.GELU_IN_BITS, out_bits=max(8, _bits(v["seg_table"])), lanes=4, latency=2)
    if unit == "softmax":
        return dict(in_bits=widths.SOFTMAX_IN_BITS, max_len=max(64, _pow2_at_least(int(v["seg_len"].max()))),
                    lanes=2)
    if unit == "layernorm":
        return dict(in_bits=widths.LN_IN_BITS, out_bits=max(8, int(v["seg_width"].max())),
                    max_n=max(512, _pow2_at_least(int(v["seg_len"].max()))), lanes=4, steps_per_cycle=2)
    if unit == "mac_array":
        return dict(rows=4, cols=4, act_bits=max(8, _bits(v["x"])), weight_bits=max(4, _bits(v["w"])),
                    max_m=max(TRACE_GEMM_ROWS, int(v["g_m"].max())))
    raise ValueError(f"unknown unit {unit!r} (accepted: {', '.join(UNITS)})")


def files(unit: str) -> list[Path]:
    """The trace files of ``unit`` present in the tree, one per traced program."""
    return sorted(TRACE_DIR.glob(f"*/{unit}.npz"))


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
