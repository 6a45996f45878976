"""The golden engine: runs an IntegerProgram with the integer operations of sim.intops.

Integer arithmetic only, vectorized over a leading batch dimension. Every op
of a sample depends on that sample alone, so outputs never depend on what
else is in the batch. The engine can record the integer inputs and outputs of
every op for chosen samples; the RTL benches replay those traces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim import intops
from sim.program import IntegerProgram, Op, ProgramError


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    overflows: dict[str, int] = field(default_factory=dict)  #: accumulator saturations per op
    trace: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)  #: op -> {"inputs", "outputs"}


def _key_mask(mask: np.ndarray, ndim: int) -> np.ndarray:
    """[B, T] attention mask -> boolean key mask broadcastable onto [B, ..., Tq, Tk] scores."""
    m = np.asarray(mask) != 0
    return m.reshape(m.shape[:1] + (1,) * (ndim - 2) + m.shape[1:])


def _accumulator(name: str, acc: np.ndarray, overflows: dict[str, int]) -> np.ndarray:
    """Saturate an accumulator at ACC_BITS and count what saturated (two reductions when nothing does)."""
    lo, hi = intops.int_range(intops.ACC_BITS)
    if acc.size == 0 or (acc.min() >= lo and acc.max() <= hi):
        overflows[name] = 0
        return acc
    overflows[name] = intops.count_saturated(acc, intops.ACC_BITS)
    return intops.saturate(acc, intops.ACC_BITS)


def _run_op(op: Op, args: list[np.ndarray], overflows: dict[str, int]) -> list[np.ndarray]:
    a, p = op.attrs, op.params
    k = op.kind
    if k == "linear":
        return [_accumulator(op.name, intops.accumulate(args[0], p["weight"], p["bias"]), overflows)]
    if k == "matmul":
        b = np.swapaxes(args[1], -1, -2) if a["transpose_b"] else args[1]
        return [_accumulator(op.name, intops.exact_matmul(args[0], b), overflows)]
    if k == "requant":
        zp = p["zero_points"] if "zero_points" in p else a["zero_point"]
        return [intops.requantize(args[0], p["m"], p["shift"], a["out_bits"], zp, a["signed"])]
    if k == "add":
        return [intops.add(args[0], args[1], a["ma"], a["mb"], a["shift"], a["out_bits"])]
    if k == "add_const":
        return [intops.saturate(args[0] + p["const"].astype(np.int64), a["out_bits"])]
    if k == "layernorm":
        return [intops.layernorm(args[0], p["gamma"], p["beta"], a["shift"], a["out_bits"], a["frac_bits"],
                                 in_shift=p.get("in_shift"))]
    if k == "softmax_log2":
        valid = _key_mask(args[1], args[0].ndim) if len(args) > 1 else None
        return [intops.softmax_log2(args[0], valid, a["code_bits"], a["frac_bits"], sqrt2=a.get("sqrt2", False))]
    if k == "matmul_log2":
        acc = intops.exact_matmul(intops.log2_weights(args[0], a["code_bits"], a.get("sqrt2", False)), args[1])
        return [_accumulator(op.name, acc, overflows)]
    if k == "gelu":
        return [intops.gelu(args[0], p["table"], a["in_bits"])]
    if k == "embedding":
        return [intops.embedding(args[0], p["table"])]
    if k == "patchify":
        x = args[0]
        b, c, h, w = x.shape
        s = a["patch"]
        x = x.reshape(b, c, h // s, s, w // s, s).transpose(0, 2, 4, 1, 3, 5)
        return [x.reshape(b, (h // s) * (w // s), c * s * s)]
    if k == "split":
        cuts = np.cumsum(a["sizes"])[:-1]
        return list(np.split(args[0], cuts, axis=-1))
    if k == "split_heads":
        x = args[0]
        h = a["heads"]
        x = x.reshape(x.shape[:-1] + (h, x.shape[-1] // h))
        return [np.moveaxis(x, -2, -3)]
    if k == "merge_heads":
        x = np.moveaxis(args[0], -3, -2)
        return [x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))]
    if k == "concat_token":
        x = args[0]
        tok = np.broadcast_to(p["token"].astype(np.int64), x.shape[:-2] + (1, x.shape[-1]))
        return [np.concatenate([tok, x], axis=-2)]
    if k == "select_token":
        return [args[0][..., a["index"], :]]
    if k == "mean_pool":
        return [intops.mean_pool(args[0], np.asarray(args[1]) != 0)]
    raise ProgramError(f"op {op.name!r}: unknown kind {k!r}")


def run(
    program: IntegerProgram,
    inputs: dict[str, np.ndarray],
    *,
    trace_samples: list[int] | None = None,
    keep: list[str] | None = None,
) -> RunResult:
    """Run ``program`` on a batch of integer ``inputs`` (each [B, ...]).

    ``trace_samples`` records every op's integer inputs and outputs for those
    batch indices. ``keep`` names extra tensors to return besides the outputs.
    """
    env: dict[str, np.ndarray] = {}
    for spec in program.inputs:
        if spec.name not in inputs:
            raise ProgramError(f"input {spec.name!r} missing (program inputs: {[t.name for t in program.inputs]})")
        x = np.asarray(inputs[spec.name])
        if not np.issubdtype(x.dtype, np.integer):
            raise ProgramError(f"input {spec.name!r} must be integers, got {x.dtype}")
        lo, hi = intops.int_range(spec.bits, spec.signed)
        if x.size and (x.min() < lo or x.max() > hi):
            raise ProgramError(f"input {spec.name!r} has values outside its int{spec.bits} range [{lo}, {hi}]")
        if len(x.shape) != len(spec.shape) + 1:
            raise ProgramError(f"input {spec.name!r} must have shape [batch, {spec.shape}], got {x.shape}")
        env[spec.name] = x.astype(np.int64)
    if "positions" in program.tensors:
        first = env[program.inputs[0].name]
        env["positions"] = np.broadcast_to(np.arange(first.shape[1], dtype=np.int64), first.shape[:2])
    result = RunResult(outputs={})
    producers_needed = _last_use(program)
    for i, op in enumerate(program.ops):
        args = [env[n] for n in op.inputs]
        outs = _run_op(op, args, result.overflows)
        if trace_samples is not None:
            result.trace[op.name] = {"inputs": [x[trace_samples].copy() for x in args],
                                     "outputs": [y[trace_samples].copy() for y in outs]}
        for name, y in zip(op.outputs, outs):
            env[name] = y
        for name in producers_needed.get(i, ()):  # free tensors nothing later reads
            if name not in program.outputs and (keep is None or name not in keep):
                env.pop(name, None)
    result.outputs = {n: env[n] for n in program.outputs}
    for n in keep or ():
        result.outputs[n] = env[n]
    return result


def _last_use(program: IntegerProgram) -> dict[int, list[str]]:
    last: dict[str, int] = {}
    for i, op in enumerate(program.ops):
        for n in op.inputs:
            last[n] = i
    freed: dict[int, list[str]] = {}
    for n, i in last.items():
        freed.setdefault(i, []).append(n)
    return freed
