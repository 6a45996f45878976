"""The IntegerProgram: the one artifact quantization produces and everything else consumes.

A program is a list of ops over named integer tensors. Every op carries its
integer attributes (bit widths, zero points, per-channel (M, shift) tables,
lookup tables) as JSON attributes and integer arrays ("params"). It is saved as
one safetensors file: the arrays as tensors named ``"<op>.<param>"`` and the
graph as JSON in the metadata under ``"ptq2rtl.program"``, with a schema
version. Loading validates dtypes, value ranges, shapes and attributes, and a
bad file gets a :class:`ProgramError` naming the op and the field.

Shapes are given without the batch dimension; ``None`` marks a dimension fixed
only at run time (the number of tokens of a text input).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sim import intops

SCHEMA_VERSION = 1
METADATA_KEY = "ptq2rtl.program"
BUILTIN_TENSORS = ("positions",)  #: derived by the engine: 0..T-1 per sample


class ProgramError(ValueError):
    """A program that cannot be run: names the file, op and field at fault."""


@dataclass
class TensorSpec:
    """An integer tensor: width, signedness, shape (no batch dim) and the real-valued grid it encodes."""

    name: str
    bits: int
    signed: bool = True
    shape: tuple[int | None, ...] = ()
    scale: float | None = None  # real value = scale * (q - zero_point); metadata, never used by the engine
    zero_point: int = 0

    def to_json(self) -> dict:
        return {"name": self.name, "bits": self.bits, "signed": self.signed, "shape": list(self.shape),
                "scale": self.scale, "zero_point": self.zero_point}

    @classmethod
    def from_json(cls, d: dict) -> "TensorSpec":
        return cls(name=d["name"], bits=int(d["bits"]), signed=bool(d["signed"]),
                   shape=tuple(None if s is None else int(s) for s in d["shape"]),
                   scale=None if d.get("scale") is None else float(d["scale"]),
                   zero_point=int(d.get("zero_point", 0)))


@dataclass
class Op:
    kind: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "inputs": self.inputs, "outputs": self.outputs,
                "attrs": self.attrs, "params": sorted(self.params)}


@dataclass
class IntegerProgram:
    model: str
    inputs: list[TensorSpec]
    outputs: list[str]
    tensors: dict[str, TensorSpec]
    ops: list[Op]
    meta: dict[str, Any] = field(default_factory=dict)

    def tensor(self, name: str) -> TensorSpec:
        return self.tensors[name]

    def ops_of(self, kind: str) -> list[Op]:
        return [op for op in self.ops if op.kind == kind]

    # ---------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> None:
        """Validate, then write atomically: a crash or Ctrl-C never leaves a half-written file."""
        from safetensors.numpy import save_file

        validate(self)
        path = Path(path)
        arrays = {f"{op.name}.{k}": np.ascontiguousarray(v) for op in self.ops for k, v in op.params.items()}
        graph = {"schema_version": SCHEMA_VERSION, "model": self.model, "meta": self.meta,
                 "inputs": [t.name for t in self.inputs], "outputs": self.outputs,
                 "tensors": [t.to_json() for t in self.tensors.values()],
                 "ops": [op.to_json() for op in self.ops]}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(arrays, tmp, metadata={METADATA_KEY: json.dumps(graph)})
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "IntegerProgram":
        """Read and validate a program file; every problem is a ProgramError naming the file."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ProgramError(f"{path}: no such program file")
        try:
            with safe_open(str(path), framework="numpy") as fh:
                metadata = fh.metadata() or {}
                arrays = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:  # safetensors raises several types for truncated/corrupt headers
            raise ProgramError(f"{path}: not a readable program file (truncated or corrupt: {exc})") from None
        if METADATA_KEY not in metadata:
            raise ProgramError(f"{path}: safetensors file without a ptq2rtl program graph")
        try:
            graph = json.loads(metadata[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise ProgramError(f"{path}: program graph is not valid JSON ({exc})") from None
        try:
            return _from_graph(graph, arrays, path)
        except ProgramError as exc:
            raise ProgramError(f"{path}: {exc}") from None


def _from_graph(graph: dict, arrays: dict[str, np.ndarray], path: Path) -> IntegerProgram:
    version = graph.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ProgramError(f"unknown schema version {version!r} (this ptq2rtl reads version {SCHEMA_VERSION})")
    try:
        tensors = {d["name"]: TensorSpec.from_json(d) for d in graph["tensors"]}
        ops = []
        for d in graph["ops"]:
            params = {}
            for key in d["params"]:
                full = f"{d['name']}.{key}"
                if full not in arrays:
                    raise ProgramError(f"op {d['name']!r} ({d['kind']}): field {key!r}: tensor {full!r} missing from file")
                params[key] = arrays[full]
            ops.append(Op(kind=d["kind"], name=d["name"], inputs=list(d["inputs"]), outputs=list(d["outputs"]),
                          attrs=dict(d["attrs"]), params=params))
        inputs = [tensors[name] for name in graph["inputs"]]
        program = IntegerProgram(model=graph["model"], inputs=inputs, outputs=list(graph["outputs"]),
                                 tensors=tensors, ops=ops, meta=dict(graph.get("meta", {})))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ProgramError):
            raise
        raise ProgramError(f"malformed program graph ({type(exc).__name__}: {exc})") from None
    validate(program)
    return program


# -------------------------------------------------------------------- validation
class _Check:
    """Helpers that raise ProgramError naming the op and field."""

    def __init__(self, op: Op):
        self.op = op

    def fail(self, fieldname: str, problem: str) -> None:
        raise ProgramError(f"op {self.op.name!r} ({self.op.kind}): field {fieldname!r}: {problem}")

    def attr(self, key: str, lo: int | None = None, hi: int | None = None, kind: type = int) -> Any:
        if key not in self.op.attrs:
            self.fail(key, "missing attribute")
        v = self.op.attrs[key]
        if kind is bool:
            if not isinstance(v, bool):
                self.fail(key, f"must be true or false, got {v!r}")
            return v
        if kind is list:
            if not isinstance(v, list):
                self.fail(key, f"must be a list, got {v!r}")
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(key, f"must be an integer, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.fail(key, f"{v} outside the accepted range [{lo}, {hi}]")
        return v

    def param(self, key: str, ndim: int | None = None, lo: int | None = None, hi: int | None = None,
              what: str = "") -> np.ndarray:
        if key not in self.op.params:
            self.fail(key, "missing parameter")
        a = self.op.params[key]
        if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.integer):
            self.fail(key, f"must be an integer array, got {getattr(a, 'dtype', type(a))}")
        if ndim is not None and a.ndim != ndim:
            self.fail(key, f"must have {ndim} dimension(s), got shape {a.shape}")
        if a.size and lo is not None and hi is not None:
            amin, amax = int(a.min()), int(a.max())
            if amin < lo or amax > hi:
                bad = amin if amin < lo else amax
                self.fail(key, f"values outside {what or 'the accepted range'} [{lo}, {hi}] (found {bad})")
        return a


def _last(shape: tuple) -> int | None:
    return shape[-1] if shape else None


def _same(a: int | None, b: int | None) -> bool:
    return a is None or b is None or a == b


def _shape_linear(c: _Check, ins, p):
    wbits = c.attr("wbits", 2, 8)
    abits = c.attr("abits", 2, 16)
    lo, hi = intops.int_range(wbits)
    w = c.param("weight", 2, lo, hi, f"int{wbits} range")
    c.param("bias", 1, *intops.int_range(32), "int32 range")
    if c.op.params["bias"].shape[0] != w.shape[0]:
        c.fail("bias", f"has {c.op.params['bias'].shape[0]} entries for {w.shape[0]} output channels")
    x = ins[0]
    if x.bits > abits:
        c.fail("abits", f"input {x.name!r} is {x.bits}-bit, wider than abits={abits}")
    if not _same(_last(x.shape), w.shape[1]):
        c.fail("weight", f"expects {w.shape[1]} input features, input {x.name!r} has shape {x.shape}")
    return [x.shape[:-1] + (w.shape[0],)]


def _shape_matmul(c: _Check, ins, p):
    a, b = ins
    tb = c.attr("transpose_b", kind=bool)
    for t in ins:
        if t.zero_point != 0:
            c.fail("inputs", f"matmul operands must be symmetric; {t.name!r} has zero point {t.zero_point}")
    kb = b.shape[-1] if tb else b.shape[-2]
    n = b.shape[-2] if tb else b.shape[-1]
    if not _same(a.shape[-1], kb):
        c.fail("inputs", f"inner dimensions differ: {a.name!r} {a.shape} x {b.name!r} {b.shape} (transpose_b={tb})")
    return [a.shape[:-1] + (n,)]


def _shape_requant(c: _Check, ins, p):
    out_bits = c.attr("out_bits", 2, 32)
    signed = c.attr("signed", kind=bool)
    zp = c.attr("zero_point")
    lo, hi = intops.int_range(out_bits, signed)
    if not lo <= zp <= hi:
        c.fail("zero_point", f"{zp} outside the output range [{lo}, {hi}]")
    m = c.param("m", 1, 0, (1 << 16) - 1, "16-bit unsigned multipliers")
    shift = c.param("shift", 1, 0, 62, "shift amounts")
    if m.shape != shift.shape:
        c.fail("shift", f"shape {shift.shape} differs from m's {m.shape}")
    if "zero_points" in c.op.params:
        zps = c.param("zero_points", 1, lo, hi, f"the output's int{out_bits} range")
        if zps.shape != m.shape:
            c.fail("zero_points", f"shape {zps.shape} differs from m's {m.shape}")
    if c.attr("pow2", kind=bool) and m.size and (np.any(m < 1) or np.any(m & (m - 1))):
        c.fail("m", "a power-of-two requantizer has only powers of two (shifts) as M")
    if m.size and np.any((m > 1) & (shift > 0) & ((m & (m - 1)) == 0)) and c.attr("pow2", kind=bool):
        c.fail("shift", "a power-of-two requantizer shifts one way: M > 1 with a right shift")
    x = ins[0]
    if m.shape[0] != 1 and not _same(_last(x.shape), m.shape[0]):
        c.fail("m", f"{m.shape[0]} channels, input {x.name!r} has shape {x.shape}")
    return [x.shape]


def _shape_add(c: _Check, ins, p):
    c.attr("ma", 0, (1 << 16) - 1)
    c.attr("mb", 0, (1 << 16) - 1)
    c.attr("shift", 0, 62)
    c.attr("out_bits", 2, 32)
    a, b = ins
    if len(a.shape) != len(b.shape) or not all(_same(x, y) for x, y in zip(a.shape, b.shape)):
        c.fail("inputs", f"shapes differ: {a.name!r} {a.shape} vs {b.name!r} {b.shape}")
    return [a.shape]


def _shape_layernorm(c: _Check, ins, p):
    c.attr("shift", 0, 62)
    c.attr("out_bits", 2, 32)
    c.attr("frac_bits", 1, 14)
    g = c.param("gamma", 1, *intops.int_range(16), "int16 range")
    c.param("beta", 1, *intops.int_range(32), "int32 range")
    x = ins[0]
    if x.bits > 16:
        c.fail("inputs", f"LayerNorm input {x.name!r} is {x.bits}-bit, the unit takes at most 16")
    if not _same(_last(x.shape), g.shape[0]):
        c.fail("gamma", f"{g.shape[0]} channels, input {x.name!r} has shape {x.shape}")
    if c.op.params["beta"].shape != g.shape:
        c.fail("beta", f"shape {c.op.params['beta'].shape} differs from gamma's {g.shape}")
    if "in_shift" in c.op.params:
        sh = c.param("in_shift", 1, 0, 3, "power-of-two factors")
        if sh.shape != g.shape:
            c.fail("in_shift", f"shape {sh.shape} differs from gamma's {g.shape}")
        if x.bits > 13:
            c.fail("inputs", f"a LayerNorm with power-of-two factors takes inputs of at most 13 bits, {x.name!r} is {x.bits}")
    return [x.shape]


def _optional_bool(c: _Check, key: str) -> None:
    if key in c.op.attrs:
        c.attr(key, kind=bool)


def _shape_softmax(c: _Check, ins, p):
    c.attr("code_bits", 2, 5)
    _optional_bool(c, "sqrt2")
    c.attr("frac_bits", 1, 10)
    if ins[0].bits > 16:
        c.fail("inputs", f"softmax input {ins[0].name!r} is {ins[0].bits}-bit, the unit takes at most 16")
    return [ins[0].shape]


def _shape_matmul_log2(c: _Check, ins, p):
    c.attr("code_bits", 2, 5)
    _optional_bool(c, "sqrt2")
    codes, v = ins
    if v.zero_point != 0:
        c.fail("inputs", f"V must be symmetric; {v.name!r} has zero point {v.zero_point}")
    if not _same(codes.shape[-1], v.shape[-2]):
        c.fail("inputs", f"codes {codes.shape} do not match V {v.shape}")
    return [codes.shape[:-1] + (v.shape[-1],)]


def _shape_gelu(c: _Check, ins, p):
    in_bits = c.attr("in_bits", 2, 10)
    out_bits = c.attr("out_bits", 2, 16)
    t = c.param("table", 1, *intops.int_range(out_bits), f"int{out_bits} range")
    if t.shape[0] != 1 << in_bits:
        c.fail("table", f"has {t.shape[0]} entries, a {in_bits}-bit input needs {1 << in_bits}")
    if ins[0].bits != in_bits:
        c.fail("in_bits", f"input {ins[0].name!r} is {ins[0].bits}-bit")
    return [ins[0].shape]


def _shape_embedding(c: _Check, ins, p):
    out_bits = c.attr("out_bits", 2, 16)
    t = c.param("table", 2, *intops.int_range(out_bits), f"int{out_bits} range")
    return [ins[0].shape + (t.shape[1],)]


def _shape_patchify(c: _Check, ins, p):
    k = c.attr("patch", 1, 64)
    ch, h, w = ins[0].shape
    if h % k or w % k:
        c.fail("patch", f"{k} does not divide the image size {h}x{w}")
    return [((h // k) * (w // k), ch * k * k)]


def _shape_split(c: _Check, ins, p):
    sizes = c.attr("sizes", kind=list)
    if not _same(_last(ins[0].shape), sum(sizes)):
        c.fail("sizes", f"sum {sum(sizes)} differs from the last dimension of {ins[0].name!r} {ins[0].shape}")
    if len(sizes) != len(c.op.outputs):
        c.fail("sizes", f"{len(sizes)} sizes for {len(c.op.outputs)} outputs")
    return [ins[0].shape[:-1] + (s,) for s in sizes]


def _shape_split_heads(c: _Check, ins, p):
    h = c.attr("heads", 1, 256)
    *lead, t, d = ins[0].shape
    if d is not None and d % h:
        c.fail("heads", f"{h} heads do not divide width {d}")
    return [tuple(lead) + (h, t, None if d is None else d // h)]


def _shape_merge_heads(c: _Check, ins, p):
    *lead, h, t, d = ins[0].shape
    return [tuple(lead) + (t, None if d is None or h is None else h * d)]


def _shape_concat_token(c: _Check, ins, p):
    x = ins[0]
    lo, hi = intops.int_range(x.bits, x.signed)
    tok = c.param("token", 1, lo, hi, f"the input's int{x.bits} range")
    if not _same(_last(x.shape), tok.shape[0]):
        c.fail("token", f"width {tok.shape[0]} differs from {x.name!r} {x.shape}")
    t = x.shape[-2]
    return [x.shape[:-2] + (None if t is None else t + 1, x.shape[-1])]


def _shape_add_const(c: _Check, ins, p):
    c.attr("out_bits", 2, 32)
    x = ins[0]
    k = c.param("const", None, *intops.int_range(32), "int32 range")
    if k.ndim > len(x.shape) or not all(_same(a, b) for a, b in zip(x.shape[::-1], k.shape[::-1])):
        c.fail("const", f"shape {k.shape} does not broadcast onto {x.name!r} {x.shape}")
    return [x.shape]


def _shape_select_token(c: _Check, ins, p):
    c.attr("index", 0, None)
    return [ins[0].shape[:-2] + (ins[0].shape[-1],)]


def _shape_mean_pool(c: _Check, ins, p):
    return [ins[0].shape[:-2] + (ins[0].shape[-1],)]


OP_SHAPES: dict[str, tuple[int, Callable]] = {
    # kind: (number of inputs, check-and-infer function)
    "linear": (1, _shape_linear),
    "matmul": (2, _shape_matmul),
    "requant": (1, _shape_requant),
    "add": (2, _shape_add),
    "add_const": (1, _shape_add_const),
    "layernorm": (1, _shape_layernorm),
    "softmax_log2": (None, _shape_softmax),  # scores, optionally a key mask
    "matmul_log2": (2, _shape_matmul_log2),
    "gelu": (1, _shape_gelu),
    "embedding": (1, _shape_embedding),
    "patchify": (1, _shape_patchify),
    "split": (1, _shape_split),
    "split_heads": (1, _shape_split_heads),
    "merge_heads": (1, _shape_merge_heads),
    "concat_token": (1, _shape_concat_token),
    "select_token": (1, _shape_select_token),
    "mean_pool": (2, _shape_mean_pool),
}


def validate(program: IntegerProgram) -> None:
    """Check every op's attributes, params, value ranges and the shapes flowing between ops."""
    known: dict[str, tuple] = {t.name: t.shape for t in program.inputs}
    if "positions" in program.tensors:
        known["positions"] = program.tensors["positions"].shape
    for name, spec in program.tensors.items():
        if not 1 <= spec.bits <= 64:
            raise ProgramError(f"tensor {name!r}: field 'bits': {spec.bits} outside [1, 64]")
    for op in program.ops:
        if op.kind not in OP_SHAPES:
            raise ProgramError(f"op {op.name!r}: unknown kind {op.kind!r} (known: {', '.join(sorted(OP_SHAPES))})")
        arity, infer = OP_SHAPES[op.kind]
        c = _Check(op)
        if arity is not None and len(op.inputs) != arity:
            c.fail("inputs", f"expects {arity} input(s), got {len(op.inputs)}")
        for name in op.inputs + op.outputs:
            if name not in program.tensors:
                c.fail("inputs" if name in op.inputs else "outputs", f"tensor {name!r} is not declared")
        for name in op.inputs:
            if name not in known:
                c.fail("inputs", f"tensor {name!r} is used before any op produces it")
        ins = [TensorSpec(**{**program.tensors[n].__dict__, "shape": known[n]}) for n in op.inputs]
        shapes = infer(c, ins, op.params)
        for name, shape in zip(op.outputs, shapes):
            declared = program.tensors[name].shape
            if len(declared) != len(shape) or not all(_same(a, b) for a, b in zip(declared, shape)):
                c.fail("outputs", f"tensor {name!r} declared with shape {declared}, the op produces {shape}")
            known[name] = shape
    for name in program.outputs:
        if name not in known:
            raise ProgramError(f"program output {name!r} is never produced")
