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
from sim import intops

TRACE_DIR = Path(__file__).resolve().parent / "data" / "traces"
UNITS = ("requant", "gelu", "softmax", "layernorm", "mac_array")
MAX_ELEMS = 512  #: elements sampled per requant / GELU op
MAX_ROWS = 6  #: rows sampled per softmax / LayerNorm op
GEMM_ROWS, GEMM_COLS = 6, 8  #: output rows and channels sampled per linear / matmul op (the whole K)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def _bits(a: np.ndarray) -> int:
    """The narrowest signed width holding every value of ``a``."""
    lo, hi = int(a.min(initial=0)), int(a.max(initial=0))
    b = 2
    while not (-(1 << (b - 1)) <= lo and hi < (1 << (b - 1))):
        b += 1
    return b


def extract(program, trace: dict, tag: str, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per unit, the vectors of every traced op it runs (source ``trace:<tag>``)."""
    rng = np.random.default_rng(seed)
    src = f"trace:{tag}"
    parts: dict[str, list] = {u: [] for u in UNITS}
    for op in program.ops:
        if op.name not in trace:
            continue
        ins, outs = trace[op.name]["inputs"], trace[op.name]["outputs"]
        a, p = op.attrs, op.params
        if op.kind == "requant":
            x = ins[0].reshape(-1, ins[0].shape[-1])
            c = x.shape[1]
            flat = rng.choice(x.size, min(MAX_ELEMS, x.size), replace=False)
            zp = p["zero_points"] if "zero_points" in p else np.full(c, a["zero_point"])
            m = np.broadcast_to(p["m"], (c,))
            shift = np.broadcast_to(p["shift"], (c,))
            zp = np.broadcast_to(zp, (c,))
            ch = flat % c
            _agree(op, outs[0].ravel()[flat],
                   intops.requantize(x.ravel()[flat], m[ch], shift[ch], a["out_bits"], zp[ch], a["signed"]))
            parts["requant"].append(vec.requant_segment(x.ravel()[flat], ch, m, shift, zp, a["out_bits"],
                                                        a["signed"], op.name, src))
        elif op.kind == "gelu":
            pick = rng.choice(ins[0].size, min(MAX_ELEMS, ins[0].size), replace=False)
            x = ins[0].ravel()[pick]
            _agree(op, outs[0].ravel()[pick], intops.gelu(x, p["table"], a["in_bits"]))
            parts["gelu"].append(vec.gelu_segment(x, p["table"], op.name, src))
        elif op.kind == "softmax_log2":
            t = ins[0]
            mask = np.ones(t.shape, bool)
            if len(ins) > 1:  # a [S, T] key mask onto [S, ..., Tq, Tk] scores
                km = np.asarray(ins[1]) != 0
                mask = np.broadcast_to(km.reshape(km.shape[:1] + (1,) * (t.ndim - 2) + km.shape[1:]), t.shape)
            rows = t.reshape(-1, t.shape[-1])
            pick = rng.choice(rows.shape[0], min(MAX_ROWS, rows.shape[0]), replace=False)
            _agree(op, outs[0].reshape(rows.shape)[pick],
                   intops.softmax_log2(rows[pick], mask.reshape(rows.shape)[pick], a["code_bits"], a["frac_bits"],
                                       sqrt2=bool(a.get("sqrt2", False))))
            parts["softmax"].append(vec.softmax_segment(rows[pick], mask.reshape(rows.shape)[pick], op.name, src,
                                                        sqrt2=bool(a.get("sqrt2", False))))
        elif op.kind == "layernorm":
            rows = ins[0].reshape(-1, ins[0].shape[-1])
            pick = rng.choice(rows.shape[0], min(MAX_ROWS, rows.shape[0]), replace=False)
            _agree(op, outs[0].reshape(rows.shape)[pick],
                   intops.layernorm(rows[pick], p["gamma"], p["beta"], a["shift"], a["out_bits"], a["frac_bits"],
                                    in_shift=p.get("in_shift")))
            parts["layernorm"].append(vec.layernorm_segment(rows[pick], p["gamma"], p["beta"], a["shift"], op.name,
                                                            src, in_shift=p.get("in_shift"),
                                                            out_width=a["out_bits"]))
        elif op.kind in ("linear", "matmul", "matmul_log2"):
            parts["mac_array"].append(_gemm(op, ins, outs, rng, src))
    if parts["requant"]:  # one table size for the file: pad every op's table to the widest
        width = max(seg["seg_m"].shape[1] for seg in parts["requant"])
        for seg in parts["requant"]:
            for key in ("seg_m", "seg_shift", "seg_zp"):
                seg[key] = np.pad(seg[key], ((0, 0), (0, width - seg[key].shape[1])))
    return {u: vec.merge(*segs) for u, segs in parts.items() if segs}


def _agree(op, traced: np.ndarray, recomputed: np.ndarray) -> None:
    """The vectors must reproduce what the engine computed, or the extraction is wrong."""
    if not np.array_equal(np.asarray(traced), np.asarray(recomputed)):
        raise RuntimeError(f"trace of op {op.name!r} ({op.kind}): the extracted vectors do not reproduce the "
                           f"engine's outputs")


def _gemm(op, ins, outs, rng, src: str) -> dict[str, np.ndarray]:
    """A slice of a linear / matmul: a few output rows and channels over the whole reduction."""
    if op.kind == "linear":
        x = ins[0].reshape(-1, ins[0].shape[-1])
        out = outs[0].reshape(-1, outs[0].shape[-1])
        w, b = op.params["weight"], op.params["bias"]
        kind = 0
    else:
        a, bm = ins
        lead = a.shape[:-2]
        idx = tuple(int(rng.integers(0, d)) for d in lead)  # one (sample, head)
        x, bm, out = a[idx], bm[idx], outs[0][idx]
        if op.kind == "matmul" and op.attrs["transpose_b"]:
            bm = bm.T
        w, b = bm.T, np.zeros(bm.shape[1], np.int64)  # the stationary operand, [N, K]
        kind = 0 if op.kind == "matmul" else (2 if op.attrs.get("sqrt2") else 1)
    rows = rng.choice(x.shape[0], min(GEMM_ROWS, x.shape[0]), replace=False)
    cols = rng.choice(w.shape[0], min(GEMM_COLS, w.shape[0]), replace=False)
    if kind:
        again = intops.matmul_log2(x[rows], w[cols].T, op.attrs["code_bits"], sqrt2=kind == 2)
    else:
        again = intops.linear(x[rows], w[cols], b[cols])
    _agree(op, out[rows][:, cols], again)
    return vec.gemm_case(x[rows], w[cols], b[cols], op.name, src, kind)


def unit_for(unit: str, v: dict[str, np.ndarray]) -> dict:
    """Constructor arguments of a unit that can replay the trace vectors ``v``.

    Sizes are fixed where the bundled traces allow (so every trace file of a unit, and the GELU
    and softmax bench configurations, share one simulator build) and grow only for bigger traces.
    """
    if unit == "requant":  # a program with only power-of-two multipliers runs on the shifter-only unit
        m = v["seg_m"][v["seg_m"] > 0]  # zeros pad the tables of narrower ops
        return dict(in_bits=32, out_bits=16, mult_bits=16, lanes=4, pow2=bool(np.all(m & (m - 1) == 0)),
                    channels=max(2048, _pow2_at_least(v["seg_m"].shape[1])))
    if unit == "gelu":
        return dict(in_bits=intops.GELU_IN_BITS, out_bits=max(8, _bits(v["seg_table"])), lanes=4, latency=2)
    if unit == "softmax":
        return dict(in_bits=16, max_len=max(64, _pow2_at_least(int(v["seg_len"].max()))), lanes=2)
    if unit == "layernorm":
        return dict(in_bits=16, out_bits=max(8, int(v["seg_width"].max())),
                    max_n=max(512, _pow2_at_least(int(v["seg_len"].max()))), lanes=4, steps_per_cycle=2)
    if unit == "mac_array":
        return dict(rows=4, cols=4, act_bits=max(8, _bits(v["x"])), weight_bits=max(4, _bits(v["w"])),
                    max_m=max(GEMM_ROWS, int(v["g_m"].max())))
    raise ValueError(f"unknown unit {unit!r} (accepted: {', '.join(UNITS)})")


def files(unit: str) -> list[Path]:
    """The trace files of ``unit`` present in the tree, one per traced program."""
    return sorted(TRACE_DIR.glob(f"*/{unit}.npz"))


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
