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
from typing import Any

import numpy as np

from sim import intops, widths

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
    def from_json(cls, d: Any, where: str) -> "TensorSpec":
        t = _Json(d, where)
        return cls(name=t.get("name", str), bits=t.get("bits", int), signed=t.get("signed", bool),
                   shape=tuple(_dim(s, where) for s in t.get("shape", list)),
                   scale=t.get("scale", float, optional=True), zero_point=t.get("zero_point", int, optional=True) or 0)


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
    #: token counts the engine has validated this program for (sim.engine.run)
    checked_tokens: set[int] = field(default_factory=set, repr=False, compare=False)

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
            return _from_graph(graph, arrays)
        except ProgramError as exc:
            raise ProgramError(f"{path}: {exc}") from None


def _from_graph(graph: Any, arrays: dict[str, np.ndarray]) -> IntegerProgram:
    g = _Json(graph, "program graph")
    version = g.get("schema_version", int)
    if version != SCHEMA_VERSION:
        raise ProgramError(f"unknown schema version {version!r} (this ptq2rtl reads version {SCHEMA_VERSION})")
    tensors: dict[str, TensorSpec] = {}
    for i, d in enumerate(g.get("tensors", list)):
        spec = TensorSpec.from_json(d, f"tensors[{i}]")
        if spec.name in tensors:
            raise ProgramError(f"tensor {spec.name!r} is declared twice")
        tensors[spec.name] = spec
    ops, used = [], set()
    for i, d in enumerate(g.get("ops", list)):
        o = _Json(d, f"ops[{i}]")
        name, kind = o.get("name", str), o.get("kind", str)
        params = {}
        for key in o.get("params", list):
            if not isinstance(key, str):
                raise ProgramError(f"op {name!r} ({kind}): field 'params': parameter names must be strings, got {key!r}")
            full = f"{name}.{key}"
            if full not in arrays:
                raise ProgramError(f"op {name!r} ({kind}): field {key!r}: tensor {full!r} missing from file")
            params[key] = arrays[full]
            used.add(full)
        ops.append(Op(kind=kind, name=name, inputs=o.names("inputs"), outputs=o.names("outputs"),
                      attrs=o.get("attrs", dict), params=params))
    stray = sorted(set(arrays) - used)
    if stray:
        raise ProgramError(f"tensor {stray[0]!r} in the file belongs to no op's params")
    inputs = []
    for name in g.names("inputs"):
        if name not in tensors:
            raise ProgramError(f"program input {name!r} is not declared")
        inputs.append(tensors[name])
    program = IntegerProgram(model=g.get("model", str), inputs=inputs, outputs=g.names("outputs"),
                             tensors=tensors, ops=ops, meta=g.get("meta", dict, optional=True) or {})
    validate(program)
    return program


class _Json:
    """A JSON object of the graph whose fields are read with their types checked."""

    def __init__(self, d: Any, where: str):
        if not isinstance(d, dict):
            raise ProgramError(f"{where}: must be a JSON object, got {type(d).__name__}")
        self.d, self.where = d, where

    def get(self, key: str, typ: type, optional: bool = False) -> Any:
        if key not in self.d or (optional and self.d[key] is None):
            if optional:
                return None
            raise ProgramError(f"{self.where}: field {key!r} is missing")
        v = self.d[key]
        ok = isinstance(v, typ) and not (typ in (int, float) and isinstance(v, bool))
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            ok, v = True, float(v)
        if not ok:
            raise ProgramError(f"{self.where}: field {key!r} must be {typ.__name__}, got {v!r}")
        return v

    def names(self, key: str) -> list[str]:
        v = self.get(key, list)
        if not all(isinstance(n, str) for n in v):
            raise ProgramError(f"{self.where}: field {key!r} must be a list of tensor names, got {v!r}")
        return list(v)


def _dim(s: Any, where: str) -> int | None:
    if s is None or (isinstance(s, int) and not isinstance(s, bool) and s >= 1):
        return s
    raise ProgramError(f"{where}: field 'shape': dimensions are integers >= 1 or null, got {s!r}")


# -------------------------------------------------------------------- validation
def validate(program: IntegerProgram, tokens: int | None = None) -> None:
    """Check every op against its kind's rule (``sim.ops``) and every tensor against what produces and reads it.

    Each tensor is produced once, by an op or as a program input, before it is
    read; its declared width must hold every value its producer can write, and
    each consumer accepts the declared widths of its inputs. A failure is a
    ProgramError naming the op, the field and the accepted range.

    ``tokens`` fixes the run-time dimension (``None`` in shapes), so that what
    only the token count decides is checked too (the engine does this for each
    token count it runs).
    """
    from sim.ops import OPS, Check, Value, same

    for name, spec in program.tensors.items():
        if not 1 <= spec.bits <= widths.MAX_TENSOR_BITS:
            raise ProgramError(f"tensor {name!r}: field 'bits': {spec.bits} outside [1, {widths.MAX_TENSOR_BITS}]")
        lo, hi = intops.int_range(spec.bits, spec.signed)
        if not lo <= spec.zero_point <= hi:
            raise ProgramError(f"tensor {name!r}: field 'zero_point': {spec.zero_point} outside its range [{lo}, {hi}]")
    known: dict[str, Value] = {}
    for spec in program.inputs:
        if spec.name in known:
            raise ProgramError(f"program input {spec.name!r} is listed twice")
        known[spec.name] = Value.of(spec, tuple(tokens if d is None else d for d in spec.shape))
    for name in BUILTIN_TENSORS:  # positions: 0..T-1 along the first program input's first dimension
        if name in program.tensors:
            if not program.inputs or not program.inputs[0].shape:
                raise ProgramError(f"tensor {name!r}: needs a program input with a token dimension")
            spec = program.tensors[name]
            n = known[program.inputs[0].name].shape[0]
            if len(spec.shape) != 1 or not same(spec.shape[0], n):
                raise ProgramError(f"tensor {name!r}: field 'shape': {spec.shape}, the built-in has ({n},)")
            lo, hi = intops.int_range(spec.bits, spec.signed)
            if lo > 0 or (n is not None and hi < n - 1):
                raise ProgramError(f"tensor {name!r}: field 'bits': int{spec.bits} cannot count {n} tokens")
            known[name] = Value.of(spec, (n,))
    names = set()
    for op in program.ops:
        kind = OPS.get(op.kind)
        if kind is None:
            raise ProgramError(f"op {op.name!r}: unknown kind {op.kind!r} (known: {', '.join(sorted(OPS))})")
        c = Check(op)
        if op.name in names:
            c.fail("name", "another op has the same name")
        names.add(op.name)
        lo, hi = kind.arity
        if not lo <= len(op.inputs) <= hi:
            c.fail("inputs", f"expects {lo if lo == hi else f'{lo} to {hi}'} input(s), got {len(op.inputs)}")
        for key in op.attrs:
            if key not in kind.attrs + kind.optional_attrs:
                c.fail(key, f"not an attribute of {op.kind} (accepted: {', '.join(kind.attrs + kind.optional_attrs) or 'none'})")
        for key in op.params:
            if key not in kind.params + kind.optional_params:
                c.fail(key, f"not a parameter of {op.kind} (accepted: {', '.join(kind.params + kind.optional_params) or 'none'})")
        for name in op.inputs + op.outputs:
            if name not in program.tensors:
                c.fail("inputs" if name in op.inputs else "outputs", f"tensor {name!r} is not declared")
        for name in op.inputs:
            if name not in known:
                c.fail("inputs", f"tensor {name!r} is used before any op produces it")
        outs = kind.check(c, [known[n] for n in op.inputs])
        if len(outs) != len(op.outputs):
            c.fail("outputs", f"the op makes {len(outs)} output(s), {len(op.outputs)} are named")
        for name, out in zip(op.outputs, outs):
            if name in known or op.outputs.count(name) > 1:
                c.fail("outputs", f"tensor {name!r} is already produced (each tensor has one producer)")
            spec = program.tensors[name]
            if len(spec.shape) != len(out.shape) or not all(same(a, b) for a, b in zip(spec.shape, out.shape)):
                c.fail("outputs", f"tensor {name!r} declared with shape {spec.shape}, the op produces {out.shape}")
            lo, hi = intops.int_range(spec.bits, spec.signed)
            if out.lo < lo or out.hi > hi:
                c.fail("outputs", f"tensor {name!r} is declared {'' if spec.signed else 'u'}int{spec.bits} [{lo}, {hi}], "
                                  f"the op writes values in [{out.lo}, {out.hi}]")
            known[name] = Value.of(spec, out.shape)
    for name in program.outputs:
        if name not in known:
            raise ProgramError(f"program output {name!r} is never produced")
