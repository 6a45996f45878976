"""The golden engine: runs an IntegerProgram with the integer operations of sim.intops.

Integer arithmetic only, vectorized over a leading batch dimension. Every op
of a sample depends on that sample alone, so outputs never depend on what
else is in the batch. The engine can record the integer inputs and outputs of
every op for chosen samples; the RTL benches replay those traces.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from sim import intops, widths
from sim.ops import OPS
from sim.program import IntegerProgram, Op, ProgramError, validate


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    overflows: dict[str, int] = field(default_factory=dict)  #: accumulator saturations per op
    trace: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)  #: op -> {"inputs", "outputs"}


def _accumulator(name: str, acc: np.ndarray, overflows: dict[str, int]) -> np.ndarray:
    """Saturate an accumulator at ACC_BITS and count what saturated.

    An accumulator whose dtype holds nothing past the rails (intops returns int32 where it has
    proven the sum fits) needs no look; otherwise two reductions when nothing saturates.
    """
    lo, hi = intops.int_range(widths.ACC_BITS)
    info = np.iinfo(acc.dtype)
    if acc.size == 0 or (lo <= info.min and info.max <= hi) or (acc.min() >= lo and acc.max() <= hi):
        overflows[name] = 0
        return acc
    overflows[name] = intops.count_saturated(acc, widths.ACC_BITS)
    return intops.saturate(acc, widths.ACC_BITS)


class _Context:
    """What an op's run (``sim.ops.OpKind.run``) sees of the engine: accumulator saturation, counted per op."""

    def __init__(self, overflows: dict[str, int]):
        self.overflows = overflows

    def accumulator(self, op: Op, acc: np.ndarray) -> np.ndarray:
        return _accumulator(op.name, acc, self.overflows)


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
    Inputs enter as int64; between ops tensors stay in the narrow dtypes intops
    returns; outputs, kept tensors and traces come back as int64.

    Without tracing, a batch is cut into one slice per torch thread and the slices
    run side by side, each on one thread: samples never mix, so the bits are those
    of one run over the whole batch, and no op waits on a barrier of threads.
    """
    env: dict[str, np.ndarray] = {}
    sizes: dict[str, int] = {}  # the batch and the run-time token count, shared by every input
    for spec in program.inputs:
        if spec.name not in inputs:
            raise ProgramError(f"input {spec.name!r} missing (program inputs: {[t.name for t in program.inputs]})")
        x = np.asarray(inputs[spec.name])
        if not np.issubdtype(x.dtype, np.integer):
            raise ProgramError(f"input {spec.name!r} must be integers, got {x.dtype}")
        lo, hi = intops.int_range(spec.bits, spec.signed)
        if x.size and (x.min() < lo or x.max() > hi):
            raise ProgramError(f"input {spec.name!r} has values outside its int{spec.bits} range [{lo}, {hi}]")
        want = ["batch"] + ["tokens" if d is None else d for d in spec.shape]
        if x.ndim != len(want) or any(isinstance(d, int) and d != n for d, n in zip(want, x.shape)):
            raise ProgramError(f"input {spec.name!r} must have shape [{', '.join(map(str, want))}], got {list(x.shape)}")
        for d, n in zip(want, x.shape):
            if n == 0:
                raise ProgramError(f"input {spec.name!r} has an empty dimension: shape {list(x.shape)}")
            if isinstance(d, str) and sizes.setdefault(d, n) != n:
                raise ProgramError(f"input {spec.name!r} has {n} {d}, another input has {sizes[d]}")
        env[spec.name] = x.astype(np.int64)
    if "tokens" in sizes and sizes["tokens"] not in program.checked_tokens:  # what only the token count decides
        validate(program, tokens=sizes["tokens"])
        program.checked_tokens.add(sizes["tokens"])
    batch = sizes.get("batch", 0)
    workers = min(batch, _torch_threads())
    if trace_samples is not None or workers < 2:
        return _run_ops(program, env, trace_samples, keep)
    cuts = np.linspace(0, batch, workers + 1).astype(int)
    slices = [{k: v[a:b] for k, v in env.items()} for a, b in zip(cuts[:-1], cuts[1:])]
    with _one_torch_thread_each:
        parts = list(_executor(workers).map(lambda part: _run_ops(program, part, None, keep), slices))
    result = RunResult(outputs={n: np.concatenate([p.outputs[n] for p in parts]) for n in parts[0].outputs})
    for p in parts:
        for name, count in p.overflows.items():
            result.overflows[name] = result.overflows.get(name, 0) + count
    return result


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


_THREADS_LOCK = threading.Lock()
_EXECUTORS: dict[int, ThreadPoolExecutor] = {}  # kept: each worker thread keeps intops' scratch buffers


def _executor(workers: int) -> ThreadPoolExecutor:
    with _THREADS_LOCK:
        if workers not in _EXECUTORS:
            _EXECUTORS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="ptq2rtl-engine")
        return _EXECUTORS[workers]


#: torch's intra-op threads set to 1 while any split run is inside (restored by the last one out)
_one_torch_thread_each = intops.HeldSetting("get_num_threads", "set_num_threads", 1)


def _run_ops(program: IntegerProgram, env: dict[str, np.ndarray], trace_samples: list[int] | None,
             keep: list[str] | None) -> RunResult:
    """The ops of ``program`` in order over a checked batch of inputs ``env``."""
    if "positions" in program.tensors:
        first = env[program.inputs[0].name]
        env["positions"] = np.broadcast_to(np.arange(first.shape[1], dtype=np.int64), first.shape[:2])
    result = RunResult(outputs={})
    ctx = _Context(result.overflows)
    producers_needed = _last_use(program)
    for i, op in enumerate(program.ops):
        args = [env[n] for n in op.inputs]
        outs = OPS[op.kind].run(op, args, ctx)
        if trace_samples is not None:
            result.trace[op.name] = {"inputs": [x[trace_samples].astype(np.int64) for x in args],
                                     "outputs": [y[trace_samples].astype(np.int64) for y in outs]}
        for name, y in zip(op.outputs, outs):
            env[name] = y
        for name in producers_needed.get(i, ()):  # free tensors nothing later reads
            if name not in program.outputs and (keep is None or name not in keep):
                env.pop(name, None)
    result.outputs = {n: env[n].astype(np.int64) for n in program.outputs}  # outputs and kept tensors are int64
    for n in keep or ():
        result.outputs[n] = env[n].astype(np.int64)
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
