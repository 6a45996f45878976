"""The compiler: an IntegerProgram and an accelerator description -> the instruction stream of ``sim.isa``
and the DRAM memory image it runs from, for one sample (the accelerator runs samples one after another).

Lowering (every instruction's ``note`` is the name of the program op it comes from; the loads of program
inputs, the stores of program outputs and ``end`` have none):

* ``linear`` -> ``gemm`` mode ``linear``: its weights are loaded into WBUF (the words
  ``W[j V + c, i V + r]`` of ``sim.isa``) right before it and its bias into ABUF; an input wider than the
  array's ``act_bits`` streams as digits, the lower ones (and every one of an unsigned input) unsigned,
  with ``2**(act_bits-1) * 2**(d act_bits) * sum_k W[n, k]`` added to the bias; weights wider than the
  array's ``weight_bits`` port as ``w_digits`` planes of signed digits (``sim.intops.weight_digit_planes``,
  the planes of one tile next to each other in WBUF), each folded against every activation digit.
  Weights larger than WBUF run as several gemms over column blocks (each block's weights loaded before
  it); more rows than the accumulator buffer holds (``max_m``) as several gemms over row blocks.
* ``matmul`` (``a @ b.T``) -> ``gemm`` mode ``matmul``, ``matmul_log2`` -> mode ``log2``: one gemm per
  (head) matrix. Operands wider than their port stream as balanced signed digits (``digits`` of the
  streamed one, ``w_digits`` of the stationary one: ``sim.intops.signed_digits``); the log2 codes are one
  digit.
* The epilogue (``sim.cycles._Plan`` decides, the rule of the cost model): a requant that alone consumes
  an array op's int32 result through views only drains the accumulator (gemm flag ``requant``), and a
  GELU that alone consumes that requant follows it (flag ``gelu``). Its table is loaded before the gemm.
* ``requant``, ``gelu``, ``add``, ``add_const``, ``layernorm``, ``softmax_log2`` (flag ``mask`` with a key
  mask) -> ``vector``; tables (requantizer entries from 0, GELU, LayerNorm) and constants are loaded
  right before. A GELU table of ``2**in_bits`` entries sits where its inputs index the unit's larger ROM.
* Views move nothing: patchify (only of a program input, which is then stored in DRAM as patches),
  split, split_heads, merge_heads, concat_token, select_token are aliases in ABUF (:class:`Layout`).
  ``concat_token`` loads the token into row 0 of its output, whose rows 1.. its input was written to.
* ``conv2d`` (a convolution, or a depthwise one) -> strips of output rows, each: its input rows staged
  with their padding, the patches gathered by vector copies, one ``gemm`` mode ``linear`` (a depthwise
  convolution: one a channel word, its tiles diagonal); see :class:`_Conv`. Grouped convolutions other
  than depthwise are refused.
* ``embedding``, ``mean_pool``, ``max_pool``, ``channels_last`` (an image's load) and the row gathers are
  refused (not compiled yet), as is anything :func:`sim.accel.check_program` refuses.

ABUF allocation: every stored tensor and the views of it are one region, allocated (first fit) before
the op that first writes it and freed after the last op that reads it; program outputs stay to the end
and are stored then. Feature maps too large for that stay in DRAM: a program input that only
convolutions read is never loaded whole (each strip loads its rows), and a program output that a
convolution makes and nothing else in the program reads is stored strip by strip. There are no other
spills in this version: a live set larger than ABUF is refused, naming the op, the words needed and the
words ABUF holds.

The memory image: beat 0 on, the instructions (``sim.isa.instr_beats`` each); then every load's data in
instruction order; then each program input; then room for each program output. A tensor in DRAM is in
row-major vector layout, its rows one after the other, each ``ceil(n / V)`` ABUF words (``4 V`` bytes, lane
``i`` a little-endian int32 at bytes ``4 i``), lanes past ``n`` zero; an image a patchify reads is stored
as the patchify's output, ``[patches, ch * patch * patch]``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np

from sim import intops, isa, widths
from sim.accel import AccelConfig, AccelError, check_program
from sim.cycles import _Plan
from sim.isa import Instr
from sim.machine import Geometry, decode_items, encode_items, instr_to_beats
from sim.ops import OPS
from sim.program import BUILTIN_TENSORS, IntegerProgram, Op, ProgramError, TensorSpec, validate
from sim.timing import ceil_div, operand_digits

#: op kinds the compiler does not take yet, and why


# ------------------------------------------------------------------ where tensors lie in ABUF
@dataclass(frozen=True)
class Layout:
    """A tensor in ABUF: element ``(i_0, .., i_{k-1}, e)`` is lane ``e % V`` of word
    ``base + sum_d i_d * strides[d] + e // V`` (``strides``: words, one per dimension but the last)."""

    base: int
    strides: tuple[int, ...]
    n: int  #: elements of the last dimension

    def at(self, lead: tuple[int, ...]) -> "Layout":
        """The sub-tensor at the leading indices ``lead``."""
        return Layout(self.base + sum(i * s for i, s in zip(lead, self.strides)), self.strides[len(lead):], self.n)

    def moved(self, by: int) -> "Layout":
        return Layout(self.base + by, self.strides, self.n)

    def row_stride(self) -> int:
        return self.strides[-1] if self.strides else 0


def dense(dims: tuple[int, ...], v: int) -> tuple[Layout, int]:
    """Row-major vector layout of ``dims`` from word 0, and its words."""
    size = ceil_div(dims[-1], v)
    strides = []
    for d in reversed(dims[:-1]):
        strides.insert(0, size)
        size *= d
    return Layout(0, tuple(strides), dims[-1]), size


def _broadcast(lay: Layout, src: tuple[int, ...], dst: tuple[int, ...]) -> Layout:
    """``lay`` (of a tensor of ``src`` dims) read as ``dst`` dims: broadcast leading dimensions stride 0."""
    lead = len(dst) - len(src)
    strides = tuple(0 if k < lead or src[k - lead] != dst[k] else lay.strides[k - lead] for k in range(len(dst) - 1))
    return Layout(lay.base, strides, lay.n)


def _flat(lay: Layout, lead: tuple[int, ...]) -> bool:
    """The leading dimensions step as one run of rows (one stride)."""
    return all(lay.strides[k] == lead[k + 1] * lay.strides[k + 1] for k in range(len(lead) - 1))


def words_of(x: np.ndarray, v: int) -> np.ndarray:
    """``x`` ``[..., n]`` as ABUF words ``[rows * ceil(n / V), V]``, lanes past ``n`` zero."""
    x = np.asarray(x, dtype=np.int64)
    rows = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
    w = ceil_div(rows.shape[1], v)
    out = np.zeros((rows.shape[0], w * v), np.int64)
    out[:, :rows.shape[1]] = rows
    return out.reshape(-1, v)


@dataclass(frozen=True)
class _Rows:
    """The first ABUF word of an operand's rows and the words from one row to the next."""

    base: int
    stride: int


# ------------------------------------------------------------------ the result
@dataclass(frozen=True)
class DramTensor:
    """A program input or output in DRAM from beat ``beat`` on, in row-major vector layout of its stored
    dimensions (an image a patchify reads: the patches)."""

    name: str
    beat: int
    shape: tuple[int, ...]  #: the program's shape of one sample
    spec: TensorSpec
    patch: Op | None = None  #: the patchify whose output an image input is stored as

    def stored_dims(self) -> tuple[int, ...]:
        if self.patch is None:
            return self.shape
        ch, h, w = self.shape
        k = self.patch.attrs["patch"]
        return (h // k) * (w // k), ch * k * k

    def words(self, v: int) -> int:
        return dense(self.stored_dims(), v)[1]


@dataclass(frozen=True)
class CompiledCycles:
    per_instr: list[int]  #: sim.isa.instr_cycles of each instruction
    per_op: dict[str, int]  #: by note (program ops, views 0; note-less instructions under their op: load, store, end)
    total: int


@dataclass
class Compiled:
    """The instruction stream of one program on one accelerator, and its DRAM image."""

    instrs: list[Instr]
    static: np.ndarray  #: uint8 [beats, beat_bytes]: the encoded instructions from beat 0, then the parameters
    n_beats: int  #: the whole image, inputs and outputs included
    inputs_at: dict[str, DramTensor]
    outputs_at: dict[str, DramTensor]
    geometry: Geometry
    op_names: list[str]

    def image(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The DRAM image (uint8 ``[n_beats, beat_bytes]``) for one sample (arrays of the inputs' shapes, or
        with a leading batch of 1)."""
        g = self.geometry
        img = np.zeros((self.n_beats, g.beat_bytes), np.uint8)
        img[:len(self.static)] = self.static
        for name, t in self.inputs_at.items():
            x = _sample(name, inputs, t)
            if t.patch is not None:
                x = OPS["patchify"].run(t.patch, [x[None]], None)[0][0]
            data = encode_items("abuf", words_of(x, g.v), g)
            img[t.beat:t.beat + len(data)] = data
        return img

    def outputs(self, image_after: np.ndarray) -> dict[str, np.ndarray]:
        """The program outputs (int64, the program's shapes) read from the image after a run."""
        g = self.geometry
        out = {}
        for name, t in self.outputs_at.items():
            beats = t.words(g.v) * g.item_beats("abuf")
            words = decode_items("abuf", image_after[t.beat:t.beat + beats], g)
            n = t.shape[-1] if t.shape else 1
            out[name] = words.reshape(-1, ceil_div(n, g.v) * g.v)[:, :n].reshape(t.shape).astype(np.int64)
        return out

    def cycles(self, accel: AccelConfig) -> CompiledCycles:
        per = [isa.instr_cycles(ins, accel) for ins in self.instrs]
        per_op = dict.fromkeys(self.op_names, 0)
        for ins, c in zip(self.instrs, per):
            key = ins.note or ins.op
            per_op[key] = per_op.get(key, 0) + c
        return CompiledCycles(per, per_op, sum(per))


def _sample(name: str, inputs: dict, t: DramTensor) -> np.ndarray:
    if name not in inputs:
        raise ProgramError(f"input {name!r} missing (program inputs: {sorted(inputs)})")
    x = np.asarray(inputs[name])
    if x.shape == (1,) + t.shape:
        x = x[0]
    if x.shape != t.shape or not np.issubdtype(x.dtype, np.integer):
        raise ProgramError(f"input {name!r}: one sample of integers of shape {t.shape}, got {x.dtype} {x.shape}")
    lo, hi = intops.int_range(t.spec.bits, t.spec.signed)
    if x.size and (x.min() < lo or x.max() > hi):
        raise ProgramError(f"input {name!r} has values outside its int{t.spec.bits} range [{lo}, {hi}]")
    return x.astype(np.int64)


# ------------------------------------------------------------------ compiling
def compile_program(program: IntegerProgram, accel: AccelConfig, *, seq_len: int | None = None) -> Compiled:
    """Lower ``program`` for one sample on ``accel`` (``seq_len``: the token count of a text program);
    :class:`AccelError` for what the accelerator or this compiler cannot run."""
    return _Compiler(program, accel, seq_len).run()


class _Abuf:
    """First-fit allocation of ABUF words."""

    def __init__(self, words: int):
        self.words = words
        self.free = [(0, words)]

    def alloc(self, n: int) -> int | None:
        for k, (base, size) in enumerate(self.free):
            if size >= n:
                self.free[k] = (base + n, size - n)
                return base
        return None

    def release(self, base: int, n: int) -> None:
        runs = sorted(self.free + [(base, n)])
        merged = [runs[0]]
        for b, s in runs[1:]:
            pb, ps = merged[-1]
            if pb + ps == b:
                merged[-1] = (pb, ps + s)
            else:
                merged.append((b, s))
        self.free = [r for r in merged if r[1]]

    def live(self) -> int:
        return self.words - sum(s for _, s in self.free)


class _Compiler:
    def __init__(self, program: IntegerProgram, accel: AccelConfig, seq_len: int | None):
        self.p, self.a = program, accel
        self.g = Geometry.of(accel)
        for op in program.ops:
            uncompiled = OPS[op.kind].uncompiled(op)
            if uncompiled is not None:
                self.refuse(op, *uncompiled)
            if any(t in BUILTIN_TENSORS for t in op.inputs):
                self.refuse(op, "inputs", "the built-in positions tensor is not compiled yet")
        check_program(program, accel, seq_len)
        if seq_len is None and any(d is None for t in program.tensors.values() for d in t.shape):
            raise AccelError(f"program {program.model!r} has a run-time token dimension: compile it with seq_len")
        self.dims = {n: tuple(seq_len if d is None else d for d in t.shape) or (1,)
                     for n, t in program.tensors.items()}
        plan = _Plan(program, accel, 1, seq_len or 1)
        self.fused = {j: i for j, (_, i) in plan.fused.items()}  #: epilogue op -> its array op
        self.index = {op.name: i for i, op in enumerate(program.ops)}
        self.epilogue: dict[int, list[int]] = defaultdict(list)
        for j, i in sorted(self.fused.items()):
            self.epilogue[i].append(j)
        self.abuf = _Abuf(self.g.abuf_words)
        self.instrs: list[Instr] = []
        #: what each instruction's dram field counts from: "param", (load | store, tensor) or None
        self.sections: list = []
        self.params: list[np.ndarray] = []
        self.param_beats = 0
        self._groups()

    def refuse(self, op: Op, fieldname: str, problem: str):
        raise AccelError(f"{self.a.name} cannot run program {self.p.model!r}: op {op.name!r} ({op.kind}): "
                         f"field {fieldname!r}: {problem}")

    # ---------------------------------------------------------------- storage groups and their layouts
    def _groups(self) -> None:
        """Each stored tensor (a root) with the views and fused results of it: one ABUF region."""
        p = self.p
        self.group: dict[str, str] = {}
        self.parent: dict[str, tuple[Op, str]] = {}
        self.children: dict[str, list[tuple[Op, str]]] = defaultdict(list)
        self.loaded: dict[str, DramTensor] = {}  #: root -> the program input loaded into it
        readers = defaultdict(list)
        for i, op in enumerate(p.ops):
            for t in op.inputs:
                readers[t].append(i)
        for spec in p.inputs:
            self.group[spec.name] = spec.name
            self.loaded[spec.name] = DramTensor(spec.name, 0, self.dims[spec.name], spec)
        for i, op in enumerate(p.ops):
            if OPS[op.kind].lowering == "patchify":  # the one view laid out in DRAM
                src = op.inputs[0]
                if src not in self.loaded or len(readers[src]) != 1:
                    self.refuse(op, "inputs", f"patchify of {src!r}: only a program input read by nothing else "
                                              f"is laid out as patches (in DRAM)")
                del self.group[src]
                self.loaded[op.outputs[0]] = replace(self.loaded.pop(src), patch=op)
                self.group[op.outputs[0]] = op.outputs[0]
            elif OPS[op.kind].role == "view" or i in self.fused:
                for out in op.outputs:
                    self.group[out] = self.group[op.inputs[0]]
                    self.parent[out] = (op, op.inputs[0])
                    self.children[op.inputs[0]].append((op, out))
            else:
                for out in op.outputs:
                    self.group[out] = out
        self.rel: dict[str, Layout] = {}
        self.size: dict[str, int] = {}
        for root in dict.fromkeys(self.group.values()):
            self._lay_out(root)
        self.base: dict[str, int] = {}
        self._feature_maps(readers)
        self._liveness()

    def _feature_maps(self, readers: dict[str, list[int]]) -> None:
        """Roots that stay in DRAM (:data:`dram`): a program input only convolutions read, and a program
        output that a convolution (with its epilogue) makes and nothing else in the program reads. A
        convolution streams them in strips of rows, so they never occupy ABUF whole."""
        def conv(i: int) -> bool:
            return OPS[self.p.ops[i].kind].lowering == "conv2d"

        members = defaultdict(list)
        for t, root in self.group.items():
            members[root].append(t)
        made_by = {out: i for i, op in enumerate(self.p.ops) for out in op.outputs}
        outputs = set(self.p.outputs)
        self.dram: set[str] = set()
        for root, ts in members.items():
            reads = [i for t in ts for i in readers[t] if i not in self.fused]
            if root in self.loaded:
                if self.loaded[root].patch is None and len(ts) == 1 and reads and all(map(conv, reads)) \
                        and root not in outputs:
                    self.dram.add(root)
            elif root in made_by and conv(made_by[root]) and not reads and outputs & set(ts):
                self.dram.add(root)

    def _anchor(self, root: str) -> str:
        """The member laid out densely: from the root down through widening views and fused results."""
        t = root
        while True:
            nxt = [(op, out) for op, out in self.children[t]
                   if OPS[op.kind].widening or self.index[op.name] in self.fused]
            if not nxt:
                return t
            if len(nxt) > 1:
                self.refuse(nxt[1][0], "inputs", f"{t!r} is also part of {nxt[0][1]!r}: it would need a copy")
            t = nxt[0][1]

    def _lay_out(self, root: str) -> None:
        anchor = self._anchor(root)
        self.rel[anchor], self.size[root] = dense(self.dims[anchor], self.g.v)
        t = anchor
        while t != root:
            op, src = self.parent[t]
            self.rel[src] = self._inverse(op, self.rel[t], src)
            t = src
        stack = [root]
        while stack:
            t = stack.pop()
            for op, out in self.children[t]:
                if out not in self.rel:
                    self.rel[out] = self._forward(op, self.rel[t], t, out)
                stack.append(out)

    def _heads(self, op: Op, d: int, h: int) -> int:
        """Words of one head of ``d`` elements (a head starts on a word)."""
        if h > 1 and d % self.g.v:
            self.refuse(op, "heads", f"heads of {d} elements do not start on {self.g.v}-lane ABUF words")
        return ceil_div(d, self.g.v)

    def _forward(self, op: Op, lay: Layout, src: str, out: str) -> Layout:
        """The layout of view (or fused result) ``out`` of ``src``."""
        if self.index[op.name] in self.fused:  # a fused result lies where its input would
            return lay
        forward = getattr(self, f"_forward_{OPS[op.kind].lowering}", None)
        if forward is None:
            self.refuse(op, "inputs", f"{op.kind} of {src!r} is not a view this compiler lays out")
        return forward(op, lay, self.dims[src], out)

    def _forward_split(self, op: Op, lay: Layout, dims: tuple, out: str) -> Layout:
        v = self.g.v
        k = op.outputs.index(out)
        offset = sum(op.attrs["sizes"][:k])
        if offset % v:
            self.refuse(op, "sizes", f"part {k} starts at element {offset}, not on a {v}-lane ABUF word")
        return Layout(lay.base + offset // v, lay.strides, op.attrs["sizes"][k])

    def _forward_split_heads(self, op: Op, lay: Layout, dims: tuple, out: str) -> Layout:
        h = op.attrs["heads"]
        d = dims[-1] // h
        return Layout(lay.base, lay.strides[:-1] + (self._heads(op, d, h), lay.strides[-1]), d)

    def _forward_merge_heads(self, op: Op, lay: Layout, dims: tuple, out: str) -> Layout:
        h, d = dims[-3], dims[-1]
        if h > 1 and lay.strides[-2] != self._heads(op, d, h):
            self.refuse(op, "inputs", f"the heads of {op.inputs[0]!r} are not side by side in its rows")
        return Layout(lay.base, lay.strides[:-2] + (lay.strides[-1],), h * d)

    def _forward_select_token(self, op: Op, lay: Layout, dims: tuple, out: str) -> Layout:
        return Layout(lay.base + op.attrs["index"] * lay.strides[-1], lay.strides[:-1], lay.n)

    def _inverse(self, op: Op, lay: Layout, src: str) -> Layout:
        """The layout of ``src`` given that of ``op``'s output (a widening view or a fused result)."""
        inverse = getattr(self, f"_inverse_{OPS[op.kind].lowering}", None)
        return lay if inverse is None or self.index[op.name] in self.fused else inverse(op, lay, src)

    def _inverse_concat_token(self, op: Op, lay: Layout, src: str) -> Layout:
        return Layout(lay.base + lay.strides[-1], lay.strides, lay.n)  # the input is rows 1.. of the output

    def _inverse_merge_heads(self, op: Op, lay: Layout, src: str) -> Layout:
        h, d = self.dims[src][-3], self.dims[src][-1]
        return Layout(lay.base, lay.strides[:-1] + (self._heads(op, d, h), lay.strides[-1]), d)

    def _liveness(self) -> None:
        """Which regions are allocated before and freed after each op."""
        n = len(self.p.ops)
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        for i, op in enumerate(self.p.ops):
            if OPS[op.kind].role == "view" and not hasattr(self, f"_lower_{OPS[op.kind].lowering}") \
                    or i in self.fused:  # views move nothing, but a class token is loaded
                continue
            for t in op.inputs:
                root = self.group.get(t)
                if root is not None:
                    last[root] = max(last.get(root, i), i)
                    if root in self.loaded:
                        first[root] = min(first.get(root, i), i)
            for t in op.outputs:
                first[self.group[t]] = min(first.get(self.group[t], i), i)
        for t in self.p.outputs:  # kept to the end (a program input is loaded first even if nothing reads it)
            last[self.group[t]] = n
            first.setdefault(self.group[t], 0)
        self.starts: dict[int, list[str]] = defaultdict(list)
        self.ends: dict[int, list[str]] = defaultdict(list)
        for root, i in first.items():
            self.starts[i].append(root)
            self.ends[max(last.get(root, i), i)].append(root)

    def layout(self, t: str) -> Layout:
        return self.rel[t].moved(self.base[self.group[t]])

    # ---------------------------------------------------------------- ABUF regions
    def _alloc(self, words: int, op: Op) -> int:
        base = self.abuf.alloc(words)
        if base is None:
            self.refuse(op, "abuf", f"{words} words needed with {self.abuf.live()} live; ABUF holds "
                                    f"{self.abuf.words} words (this compiler does not spill to DRAM)")
        return base

    # ---------------------------------------------------------------- emitting
    def emit(self, instr: Instr, section: str | None = None) -> None:
        self.instrs.append(instr)
        self.sections.append(section)

    def load(self, target: str, addr: int, values: np.ndarray, note: str) -> None:
        """A load of parameter ``values`` (``sim.machine.encode_items``) into ``target`` from ``addr`` on."""
        self.reload(target, addr, *self.param(target, values), note)

    def param(self, target: str, values: np.ndarray) -> tuple[int, int]:
        """Parameter ``values`` placed in the image: ``(items, the beat they start at among the parameters)``."""
        data = encode_items(target, values, self.g)
        at = self.param_beats
        self.params.append(data)
        self.param_beats += len(data)
        return len(data) // self.g.item_beats(target), at

    def reload(self, target: str, addr: int, count: int, at: int, note: str) -> None:
        """A load of ``count`` items of the parameters from parameter beat ``at`` on."""
        self.emit(Instr("load", {"target": target, "addr": addr, "count": count, "dram": at}, note=note), "param")

    def run(self) -> Compiled:
        for i, op in enumerate(self.p.ops):
            for root in self.starts[i]:
                if root in self.dram:
                    continue
                self.base[root] = self._alloc(self.size[root], op)
                if root in self.loaded:
                    self._transfer("load", root)
            if i not in self.fused:
                self._op(i, op)
            for root in self.ends[i]:
                if root not in self.dram:
                    self.abuf.release(self.base[root], self.size[root])
        self.outs = {}
        for name in self.p.outputs:
            self.outs[name] = DramTensor(name, 0, self.dims[name], self.p.tensors[name])
            if self.group[name] not in self.dram:  # a convolution has stored it strip by strip
                self._transfer("store", name)
        self.emit(Instr("end"))
        return self._finish()

    def _transfer(self, op: str, t: str) -> None:
        """Loads (stores) of tensor ``t`` from (to) its DRAM rows, one instruction a run of ABUF words; their
        ``dram`` fields count from the tensor's first beat (placed by :meth:`_finish`)."""
        lay, dims = self.layout(t), self.dims[t]
        w = ceil_div(dims[-1], self.g.v)
        runs: list[list[int]] = []
        for lead in np.ndindex(*dims[:-1]):
            base = lay.at(lead).base
            if runs and runs[-1][0] + runs[-1][1] == base:
                runs[-1][1] += w
            else:
                runs.append([base, w])
        offset = 0
        for base, words in runs:
            fields = {"addr": base, "count": words, "dram": offset}
            self.emit(Instr(op, {"target": "abuf", **fields} if op == "load" else fields), (op, t))
            offset += words * self.g.item_beats("abuf")

    def _finish(self) -> Compiled:
        g = self.g
        beat = len(self.instrs) * g.instr_beats + self.param_beats
        where: dict[tuple, int] = {}
        inputs_at, outputs_at = {}, {}
        for kind, tensors, into in (("load", self.loaded, inputs_at), ("store", self.outs, outputs_at)):
            for t, dram in tensors.items():
                into[dram.name] = replace(dram, beat=beat)
                where[(kind, t)] = beat
                beat += dram.words(g.v) * g.item_beats("abuf")
        params_at = len(self.instrs) * g.instr_beats
        instrs = []
        for ins, sec in zip(self.instrs, self.sections):
            if sec is not None:
                start = params_at if sec == "param" else where[sec]
                ins = replace(ins, fields={**ins.fields, "dram": ins["dram"] + start})
            instrs.append(ins)
        try:
            code = [instr_to_beats(ins, g) for ins in instrs]
        except isa.IsaError as exc:
            raise AccelError(f"{self.a.name} cannot run program {self.p.model!r}: {exc}") from None
        static = np.concatenate(code + self.params)
        return Compiled(instrs, static, beat, inputs_at, outputs_at, g, [op.name for op in self.p.ops])

    # ---------------------------------------------------------------- ops
    def _op(self, i: int, op: Op) -> None:
        lower = getattr(self, f"_lower_{OPS[op.kind].lowering}", None)
        if lower is not None:  # views other than the class token have none: they move nothing
            lower(i, op)

    def _lower_concat_token(self, i: int, op: Op) -> None:
        self._concat_token(op)

    def _lower_linear(self, i: int, op: Op) -> None:
        self._linear(i, op)

    def _lower_matmul(self, i: int, op: Op) -> None:
        self._matmul(i, op, log2=False)

    def _lower_matmul_log2(self, i: int, op: Op) -> None:
        self._matmul(i, op, log2=True)

    def _lower_requant(self, i: int, op: Op) -> None:
        self._requant_table(op)
        self._vector(op, "requant", flags=self._requant_flags(op), out_bits=op.attrs["out_bits"])

    def _lower_gelu(self, i: int, op: Op) -> None:
        self._gelu_table(op)
        self._vector(op, "gelu")

    def _lower_add(self, i: int, op: Op) -> None:
        a = op.attrs
        self._vector(op, "add", b=self.layout(op.inputs[1]), ma=a["ma"], mb=a["mb"], shift=a["shift"],
                     out_bits=a["out_bits"])

    def _lower_add_const(self, i: int, op: Op) -> None:
        self._add_const(op)

    def _lower_layernorm(self, i: int, op: Op) -> None:
        self._layernorm(op)

    def _lower_softmax(self, i: int, op: Op) -> None:
        self._softmax(op, {"sqrt2"} if op.attrs.get("sqrt2") else set())

    def _lower_softmax_tulq(self, i: int, op: Op) -> None:
        a = op.attrs
        self._softmax(op, {"tulq"} | ({"sqrt2"} if a.get("sqrt2") else set()),
                      knee=a["knee"], step_bits=a["step_bits"], grid_bits=a["grid_bits"])

    def _concat_token(self, op: Op) -> None:
        out = op.outputs[0]
        lay, dims = self.layout(out), self.dims[out]
        for lead in np.ndindex(*dims[:-2]):
            self.load("abuf", lay.at(lead + (0,)).base, words_of(op.params["token"], self.g.v), op.name)

    # the array
    def _digits(self, op: Op, spec: TensorSpec) -> tuple[int, int]:
        """Digit passes of a streamed linear input and its ``unsigned_digits`` (all but a signed top digit)."""
        digits = operand_digits(spec.bits, self.g.act_bits)
        return digits, (1 << (digits - 1)) - 1 | (0 if spec.signed else 1 << (digits - 1))

    def _signed_digits(self, op: Op, t: str, port: int, most: int, what: str) -> int:
        """Balanced signed digits of an activation x activation operand (``sim.intops.signed_digits``)."""
        spec = self.p.tensors[t]
        digits = intops.signed_digits(spec.bits, port, spec.signed)
        kind = f"{'' if spec.signed else 'u'}int{spec.bits}"
        if digits > most:
            self.refuse(op, "inputs", f"{what} {t!r} is {kind}: {digits} signed digits of the {port}-bit "
                                      f"port, past the {most} the array takes")
        if digits > 1 and port == self.g.weight_bits and self.g.weight_bits != self.g.act_bits:
            # a stationary digit's partial sums shift in act_bits steps
            self.refuse(op, "inputs", f"{what} {t!r} is {kind}: its digit passes need weight_bits = "
                                      f"act_bits (here {self.g.weight_bits} and {self.g.act_bits})")
        return digits

    def _weights(self, op: Op, w: np.ndarray, bias: np.ndarray, unsigned: int, digits: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        """The WBUF tiles ``[nf, kf, w_digits, V, V]`` of weight matrix ``w`` [n, k] (``[j, i, e, r, c]`` =
        digit ``e`` of ``W[j V + c, i V + r]``: one column block's words after another) and the bias with
        the correction for the activation's unsigned digits."""
        g, v = self.g, self.g.v
        n, k = w.shape
        offsets = [1 << (g.act_bits - 1) << (d * g.act_bits) for d in range(digits) if unsigned >> d & 1]
        bias = bias.astype(np.int64) + sum(offsets) * w.sum(axis=1)
        lo, hi = intops.int_range(widths.ACC_BITS)
        if bias.min() < lo or bias.max() > hi:
            self.refuse(op, "bias", f"with the digit correction a bias reaches {int(np.abs(bias).max())}, "
                                    f"past the int32 accumulator")
        planes = intops.weight_digit_planes(w, g.weight_bits)  # weights wider than the port: digit planes
        e = len(planes)
        if e > 1 and g.weight_bits != g.act_bits:
            self.refuse(op, "wbits", f"int{op.attrs['wbits']} weights take {e} digits of the {g.weight_bits}-bit "
                                     f"weight port, whose shifts the array counts in act_bits = {g.act_bits} steps")
        kf, nf = ceil_div(k, v), ceil_div(n, v)
        if g.wbuf_words < kf * e * v:
            self.refuse(op, "weight", f"one column block takes {kf * e * v} WBUF words; WBUF holds {g.wbuf_words}")
        padded = np.zeros((e, nf * v, kf * v), np.int64)
        padded[:, :n, :k] = planes
        return padded.reshape(e, nf, v, kf, v).transpose(1, 3, 0, 4, 2), bias

    def _linear(self, i: int, op: Op) -> None:
        v = self.g.v
        x, out = op.inputs[0], op.outputs[0]
        w = op.params["weight"].astype(np.int64)
        n = w.shape[0]
        digits, unsigned = self._digits(op, self.p.tensors[x])
        tiles, bias = self._weights(op, w, op.params["bias"], unsigned, digits)
        nf, kf, e = tiles.shape[:3]
        per = self.g.wbuf_words // (kf * e * v)
        flags, fields, rq = self._epilogue(i)
        bias_at = self._alloc(nf, op)
        self.load("abuf", bias_at, words_of(bias, v), op.name)
        for j0 in range(0, nf, per):
            j1 = min(nf, j0 + per)
            self.load("wbuf", 0, tiles[j0:j1].reshape(-1, v), op.name)
            for rows, (xr, orr) in self._blocks([self.layout(x), self.layout(out)], self.dims[x][:-1]):
                self._gemm(op, rows, xr, orr, j0, flags | {"bias"}, mode="linear", kf=kf, nf=j1 - j0,
                           digits=digits, unsigned_digits=unsigned, w_digits=e, bias_base=bias_at + j0,
                           n_valid=n - j0 * v,
                           ch_base=self._ch_base(rq, ()) + (0 if "per_tensor" in flags else j0 * v), **fields)
        self.abuf.release(bias_at, nf)

    def _lower_conv2d(self, i: int, op: Op) -> None:
        _Conv(self, i, op).run()

    def _matmul(self, i: int, op: Op, log2: bool) -> None:
        g, v = self.g, self.g.v
        a, b = op.inputs
        out = op.outputs[0]
        digits = 1  # log2 codes: one digit
        mode = "log2" if log2 else "matmul" if op.attrs["transpose_b"] else "matmul_kn"
        if not log2:
            digits = self._signed_digits(op, a, g.act_bits, isa.max_digits(self.a), "streamed operand")
        w_digits = self._signed_digits(op, b, g.weight_bits, isa.max_weight_digits(self.a), "stationary operand")
        da, db = self.dims[a], self.dims[b]
        k, cols = (da[-1], db[-2]) if mode == "matmul" else (da[-1], db[-1])
        flags, fields, rq = self._epilogue(i)
        if log2 and op.attrs.get("sqrt2"):
            flags = flags | {"sqrt2"}
        for lead in np.ndindex(*da[:-2]):
            xl, sl, ol = (self.layout(t).at(lead) for t in (a, b, out))
            self._gemm(op, da[-2], _Rows(xl.base, xl.row_stride()), _Rows(ol.base, ol.row_stride()), 0, flags,
                       mode=mode, kf=ceil_div(k, v), nf=ceil_div(cols, v), digits=digits,
                       w_digits=w_digits,
                       s_base=sl.base, s_stride=sl.row_stride(), s_valid=db[-2], n_valid=cols,
                       ch_base=self._ch_base(rq, lead), **fields)

    def _gemm(self, op: Op, rows: int, x: _Rows, out: _Rows, j0: int, flags: set, **fields) -> None:
        """Gemms over row blocks of at most ``max_m`` rows."""
        for t0 in range(0, rows, self.g.max_m):
            m = min(self.g.max_m, rows - t0)
            self.emit(Instr("gemm", {**fields, "m": m, "x_base": x.base + t0 * x.stride, "x_stride": x.stride,
                                     "out_base": out.base + t0 * out.stride + j0, "out_stride": out.stride},
                            frozenset(flags), op.name))

    def _epilogue(self, i: int) -> tuple[set, dict, Op | None]:
        """Flags and fields of array op ``i``'s drain pipeline, its tables loaded; and its requant."""
        fused = [self.p.ops[j] for j in self.epilogue.get(i, [])]
        rq = next((o for o in fused if OPS[o.kind].unit == "requant"), None)
        if rq is None:
            return set(), {}, None
        self._requant_table(rq, self.p.ops[i].name)
        flags = {"requant"} | self._requant_flags(rq)
        for o in fused:
            if OPS[o.kind].unit == "gelu":
                self._gelu_table(o, self.p.ops[i].name)
                flags.add("gelu")
        return flags, {"out_bits": rq.attrs["out_bits"]}, rq

    def _ch_base(self, rq: Op | None, lead: tuple) -> int:
        """The requant channel of output column 0 of the (head) matrix at ``lead``."""
        if rq is None or rq.params["m"].size == 1:
            return 0
        chain, t = [], rq.inputs[0]
        while t in self.parent:
            op, t = self.parent[t]
            chain.append(op)
        if not chain:
            return 0
        if [op.kind for op in chain] == ["merge_heads"]:
            return lead[-1] * self.dims[chain[0].inputs[0]][-1]  # head h starts at channel h d
        self.refuse(rq, "m", "a per-channel requant fused through views other than merge_heads")

    # the vector units
    def _blocks(self, lays: list[Layout], lead: tuple[int, ...]) -> list[tuple[int, list[_Rows]]]:
        """``(rows, [first row and row stride of each operand])`` of the instructions that cover ``lead``."""
        if not lead:
            return [(1, [_Rows(lay.base, 0) for lay in lays])]
        if all(_flat(lay, lead) for lay in lays):
            return [(math.prod(lead), [_Rows(lay.base, lay.strides[-1]) for lay in lays])]
        return [(lead[-1], [_Rows(lay.at(idx).base, lay.strides[-1]) for lay in lays]) for idx in np.ndindex(*lead[:-1])]

    def _vector(self, op: Op, unit: str, b: Layout | None = None, flags: set = frozenset(), **fields) -> None:
        a, out = op.inputs[0], op.outputs[0]
        dims = self.dims[out]
        lays = [self.layout(a), self.layout(out)] + ([b] if b is not None else [])
        for rows, rs in self._blocks(lays, dims[:-1]):
            f = {"unit": unit, "rows": rows, "words": ceil_div(dims[-1], self.g.v), "a_base": rs[0].base,
                 "a_stride": rs[0].stride, "out_base": rs[1].base, "out_stride": rs[1].stride, "n_valid": dims[-1],
                 **fields}
            if b is not None:
                f.update(b_base=rs[2].base, b_stride=rs[2].stride)
            self.emit(Instr("vector", f, frozenset(flags), op.name))

    def _requant_flags(self, op: Op) -> set:
        return ({"signed"} if op.attrs["signed"] else set()) | ({"per_tensor"} if op.params["m"].size == 1 else set())

    def _requant_table(self, op: Op, note: str | None = None) -> None:
        p = op.params
        zp = p["zero_points"] if "zero_points" in p else np.full(p["m"].shape, op.attrs["zero_point"])
        self.load("requant", 0, np.stack([p["m"], p["shift"], zp], axis=-1), note or op.name)

    def _gelu_table(self, op: Op, note: str | None = None) -> None:
        """The table where the unit's ROM address ``x + 2**(in_bits - 1)`` of each input ``x`` finds it."""
        at = (1 << (self.g.gelu_in_bits - 1)) - (1 << (op.attrs["in_bits"] - 1))
        self.load("gelu", at, op.params["table"], note or op.name)

    def _add_const(self, op: Op) -> None:
        x = op.inputs[0]
        dims = self.dims[x]
        c = np.asarray(op.params["const"], dtype=np.int64)
        c = c.reshape((1,) * (1 - min(c.ndim, 1)) + c.shape)
        c = np.broadcast_to(c, c.shape[:-1] + (dims[-1],))  # a constant broadcast along a row is stored whole
        lay, words = dense(c.shape, self.g.v)
        at = self._alloc(words, op)
        self.load("abuf", at, words_of(c, self.g.v), op.name)
        self._vector(op, "add_const", b=_broadcast(lay.moved(at), c.shape, dims), out_bits=op.attrs["out_bits"])
        self.abuf.release(at, words)

    def _layernorm(self, op: Op) -> None:
        p, v = op.params, self.g.v
        n = p["gamma"].shape[0]
        words = ceil_div(n, v)
        table = np.zeros((words * v, 3), np.int64)
        table[:n, 0], table[:n, 1] = p["gamma"], p["beta"]
        if "in_shift" in p:
            table[:n, 2] = p["in_shift"]
        self.load("layernorm", 0, table.reshape(words, v, 3), op.name)
        self._vector(op, "layernorm", shift=op.attrs["shift"], out_bits=op.attrs["out_bits"])

    def _softmax(self, op: Op, flags: set, **fields) -> None:
        b = None
        if len(op.inputs) == 2:
            mask = op.inputs[1]
            b = _broadcast(self.layout(mask), self.dims[mask], self.dims[op.inputs[0]])
            flags.add("mask")
        self._vector(op, "softmax", b=b, flags=flags, **fields)


# ------------------------------------------------------------------ convolutions
class _Conv:
    """One ``conv2d`` (its epilogue fused), in strips of output rows as large as ABUF leaves room for.

    Per strip: the input rows it reads are *staged*, padded, into ABUF (``load`` from DRAM, or a copy of
    the tensor in ABUF), the pad positions filled with the pad value's words; the patches are *gathered*
    (im2col) into rows of ``kh * kw`` taps with vector copies (``add_const`` of zero words, exact for
    inputs of up to ``sim.widths.ADDER_IN_BITS`` bits), and one ``gemm`` mode ``linear`` multiplies them:

    * a convolution: a patch row is ``kh * kw * ceil(C / V)`` words, tap after tap (each the ``C``
      channels of one input pixel, a copy moving a kernel row's ``kw`` pixels at once: ``kh`` copies an
      output row); the gemm's ``kf`` folds run over the whole patch;
    * a depthwise convolution (one filter a channel): channel word after channel word, a patch row of
      ``kh * kw`` words (the tap's copy moves one word), and a gemm with one column block whose ``kh * kw``
      stationary tiles are diagonal (lane ``c`` only meets its own filter): ``1 / V`` of the array works,
      and the gather copies ``kh * kw`` words an output pixel and channel word -- what a depthwise layer
      costs a weight-stationary array;
    * a 1x1 convolution of stride 1 without padding is a product of the pixels as they lie: no gather.

    The output rows go to the output's ABUF region, or to a staging region stored to DRAM after the strip.
    Weights are loaded once if WBUF holds them all, else column block by column block in every strip.
    """

    def __init__(self, c: _Compiler, i: int, op: Op):
        self.c, self.i, self.op = c, i, op
        v = self.v = c.g.v
        x, acc = op.inputs[0], op.outputs[0]
        (self.h, self.wd, ch), (self.oh, self.ow, n) = c.dims[x], c.dims[acc]
        (self.sh, self.sw), padding, groups, self.pad_value = OPS["conv2d"].geometry(op)
        self.pt, _, self.pl, self.pr = padding
        weight = op.params["weight"].astype(np.int64)
        _, self.kh, self.kw, _ = weight.shape
        self.depthwise = groups > 1
        self.ch, self.n = ch, n
        self.cw, self.nw, self.taps = ceil_div(ch, v), ceil_div(n, v), self.kh * self.kw
        self.wp = self.pl + self.wd + self.pr  # pixels of a staged row
        self.direct = self.taps == 1 and (self.sh, self.sw) == (1, 1) and not any(padding)
        self.from_dram, self.to_dram = c.group[x] in c.dram, c.group[acc] in c.dram
        if self.to_dram:  # the program output the strips are stored as
            self.stored_as = next(t for t in c.p.outputs if c.group[t] == c.group[acc])
        self.x, self.acc = x, acc
        spec = c.p.tensors[x]
        self.x_lay = None if self.from_dram else c.layout(x)
        if self.x_lay is not None and self.x_lay.strides != (self.wd * self.cw, self.cw):
            c.refuse(op, "inputs", f"{x!r} is not laid out densely in ABUF (a view of another tensor)")
        if not self.direct and spec.bits > widths.ADDER_IN_BITS - (0 if spec.signed else 1):
            c.refuse(op, "inputs", f"{x!r} is {'' if spec.signed else 'u'}int{spec.bits}: the patch gather "
                                   f"copies through the {widths.ADDER_IN_BITS}-bit vector adder")
        self.digits, self.unsigned = c._digits(op, spec)
        if self.depthwise:  # channel word j's diagonal tiles: [j V + c, tap V + r] = w[j V + c, tap] where r = c
            d = np.zeros((self.cw * v, self.taps, v), np.int64)
            chans = np.arange(ch)
            d[chans, :, chans % v] = weight.reshape(ch, self.taps)
            mat, bias = d.reshape(self.cw * v, self.taps * v), np.zeros(self.cw * v, np.int64)
            bias[:ch] = op.params["bias"]
        else:  # [o, (tap, channel word, lane)]
            wpad = np.zeros((n, self.kh, self.kw, self.cw * v), np.int64)
            wpad[..., :ch] = weight
            mat, bias = wpad.reshape(n, -1), op.params["bias"]
        self.tiles, self.bias = c._weights(op, mat, bias, self.unsigned, self.digits)
        self.blocks, self.kf, self.e = self.tiles.shape[:3]
        self.per = c.g.wbuf_words // (self.kf * self.e * v)

    # ---------------------------------------------------------------- ABUF
    def _words(self, rows: int) -> tuple[int, int, int]:
        """Staged input, gathered patches and staged output words of a strip of ``rows`` output rows."""
        staged = 0 if self.direct and not self.from_dram else ((rows - 1) * self.sh + self.kh) * self.wp * self.cw
        patch = self.taps * (1 if self.depthwise else self.cw)
        gathered = 0 if self.direct else rows * self.ow * patch
        return staged, gathered, rows * self.ow * self.nw if self.to_dram else 0

    def run(self) -> None:
        c, op, v = self.c, self.op, self.v
        self.flags, self.fields, rq = c._epilogue(self.i)
        self.flags |= {"bias"}
        self.ch0 = c._ch_base(rq, ())
        self.bias_at = c._alloc(self.blocks, op)
        c.load("abuf", self.bias_at, words_of(self.bias, v), op.name)
        consts = 0
        if not self.direct:  # the pad pixel's words, then zero words (the second operand of every copy)
            self.zeros = self.cw if self.depthwise else self.kw * self.cw
            consts = self.cw + self.zeros
            self.consts_at = c._alloc(consts, op)
            pad = np.zeros((1, self.cw * v), np.int64)
            pad[0, :self.ch] = self.pad_value
            c.load("abuf", self.consts_at, np.concatenate([pad.reshape(-1, v), np.zeros((self.zeros, v), np.int64)]),
                   op.name)
        for rows in range(self.oh, 0, -1):
            sizes = self._words(rows)
            base = c.abuf.alloc(sum(sizes))
            if base is not None:
                break
        else:
            c.refuse(op, "abuf", f"one output row needs {sum(self._words(1))} words with {c.abuf.live()} live; "
                                 f"ABUF holds {c.abuf.words} words")
        self.stage_at, self.gather_at, self.out_at = base, base + sizes[0], base + sizes[0] + sizes[1]
        chunks = [(j0, min(self.blocks, j0 + self.per)) for j0 in range(0, self.blocks, self.per)]
        self.weights = [c.param("wbuf", self.tiles[j0:j1].reshape(-1, v)) for j0, j1 in chunks]
        for oy0 in range(0, self.oh, rows):
            self._strip(oy0, min(rows, self.oh - oy0), chunks)
        c.abuf.release(base, sum(sizes))
        if consts:
            c.abuf.release(self.consts_at, consts)
        c.abuf.release(self.bias_at, self.blocks)

    # ---------------------------------------------------------------- a strip
    def _strip(self, oy0: int, rows: int, chunks: list[tuple[int, int]]) -> None:
        c, v = self.c, self.v
        if not (self.direct and not self.from_dram):
            self._stage(oy0, rows)
        m = rows * self.ow
        if self.to_dram:
            out = _Rows(self.out_at, self.nw)
        else:
            out = _Rows(c.layout(self.acc).base + oy0 * self.ow * self.nw, self.nw)
        gemm = dict(mode="linear", digits=self.digits, unsigned_digits=self.unsigned, w_digits=self.e, **self.fields)
        per_tensor = "per_tensor" in self.flags
        for k, (j0, j1) in enumerate(chunks):
            if len(chunks) > 1 or oy0 == 0:  # WBUF keeps weights that all fit from one strip to the next
                c.reload("wbuf", 0, *self.weights[k], self.op.name)
            if self.depthwise:
                for j in range(j0, j1):
                    self._gather_channel(rows, j)
                    c._gemm(self.op, m, _Rows(self.gather_at, self.taps), out, j, self.flags, kf=self.taps, nf=1,
                            s_base=(j - j0) * self.kf * self.e * v, bias_base=self.bias_at + j,
                            n_valid=self.ch - j * v, ch_base=self.ch0 + (0 if per_tensor else j * v), **gemm)
            else:
                if k == 0:
                    x = self._gather(rows)
                c._gemm(self.op, m, x, out, j0, self.flags, kf=self.kf, nf=j1 - j0, bias_base=self.bias_at + j0,
                        n_valid=self.n - j0 * v, ch_base=self.ch0 + (0 if per_tensor else j0 * v), **gemm)
        if self.to_dram:
            c.emit(Instr("store", {"addr": self.out_at, "count": m * self.nw,
                                   "dram": oy0 * self.ow * self.nw * c.g.item_beats("abuf")}, note=self.op.name),
                   ("store", self.stored_as))

    def _copy(self, rows: int, words: int, a: _Rows, out: _Rows, n_valid: int) -> None:
        """``rows`` rows of ``words`` words from ``a`` to ``out``: the vector adder adding zero words."""
        self.c.emit(Instr("vector", {"unit": "add_const", "rows": rows, "words": words, "a_base": a.base,
                                     "a_stride": a.stride, "b_base": self.consts_at + self.cw, "b_stride": 0,
                                     "out_base": out.base, "out_stride": out.stride, "n_valid": n_valid,
                                     "out_bits": widths.ADDER_IN_BITS}, note=self.op.name))

    def _stage(self, oy0: int, rows: int) -> None:
        """The input rows the strip reads, padded: staged row ``r`` is input row ``oy0 * sh - top + r``."""
        c, cw, wp = self.c, self.cw, self.wp
        pads, copies = [], []  # runs of staged pixels: [first, count]; [first, input pixel, count]
        for r in range((rows - 1) * self.sh + self.kh):
            iy = oy0 * self.sh - self.pt + r
            if not 0 <= iy < self.h:
                pads.append([r * wp, wp])
                continue
            pads += [[r * wp, self.pl], [r * wp + self.pl + self.wd, self.pr]]
            copies.append([r * wp + self.pl, iy * self.wd, self.wd])
        for runs, keys in ((pads, 2), (copies, 3)):
            merged: list[list[int]] = []
            for run in runs:
                if run[-1] == 0:
                    continue
                last = merged[-1] if merged else None
                if last and last[0] + last[-1] == run[0] and (keys == 2 or last[1] + last[-1] == run[1]):
                    last[-1] += run[-1]
                else:
                    merged.append(list(run))
            runs[:] = merged
        for at, count in pads:
            self._copy(count, cw, _Rows(self.consts_at, 0), _Rows(self.stage_at + at * cw, cw), self.ch)
        ib = c.g.item_beats("abuf")
        for at, src, count in copies:
            if self.from_dram:
                c.emit(Instr("load", {"target": "abuf", "addr": self.stage_at + at * cw, "count": count * cw,
                                      "dram": src * cw * ib}, note=self.op.name), ("load", c.group[self.x]))
            else:
                self._copy(count, cw, _Rows(self.x_lay.base + src * cw, cw), _Rows(self.stage_at + at * cw, cw),
                           self.ch)

    def _gather(self, rows: int) -> _Rows:
        """The strip's patch rows (a convolution's); the input's own rows for a direct 1x1 one."""
        cw, wp = self.cw, self.wp
        if self.direct:
            return _Rows(self.stage_at if self.from_dram else self.x_lay.base, cw)
        patch = self.taps * cw
        for oy in range(rows):
            for ky in range(self.kh):
                self._copy(self.ow, self.kw * cw, _Rows(self.stage_at + (oy * self.sh + ky) * wp * cw, self.sw * cw),
                           _Rows(self.gather_at + oy * self.ow * patch + ky * self.kw * cw, patch),
                           self.kw * cw * self.v)
        return _Rows(self.gather_at, patch)

    def _gather_channel(self, rows: int, j: int) -> None:
        """Channel word ``j``'s patch rows (a depthwise convolution's): its ``kh * kw`` taps."""
        cw, wp = self.cw, self.wp
        for oy in range(rows):
            for ky in range(self.kh):
                for kx in range(self.kw):
                    self._copy(self.ow, 1, _Rows(self.stage_at + ((oy * self.sh + ky) * wp + kx) * cw + j, self.sw * cw),
                               _Rows(self.gather_at + oy * self.ow * self.taps + ky * self.kw + kx, self.taps), self.v)


# ------------------------------------------------------------------ cutting programs
def sub_program(program: IntegerProgram, op_names: list[str]) -> IntegerProgram:
    """The ops ``op_names`` of ``program`` as a program of their own: its inputs are the tensors they read
    and do not make, its outputs what they make and other ops (or the program's outputs) read."""
    names = set(op_names)
    unknown = names - {op.name for op in program.ops}
    if unknown:
        raise ProgramError(f"program {program.model!r} has no op {sorted(unknown)[0]!r}")
    ops = [op for op in program.ops if op.name in names]
    made = {t for op in ops for t in op.outputs}
    inputs: list[str] = []
    for op in ops:
        inputs += [t for t in op.inputs if t not in made and t not in inputs]
    read_elsewhere = {t for op in program.ops if op.name not in names for t in op.inputs} | set(program.outputs)
    outputs = [t for op in ops for t in op.outputs if t in read_elsewhere]
    used = set(inputs) | made
    sub = IntegerProgram(model=program.model, inputs=[program.tensors[t] for t in inputs], outputs=outputs,
                         tensors={n: s for n, s in program.tensors.items() if n in used}, ops=ops,
                         meta={**program.meta, "sub_program": [ops[0].name, ops[-1].name]})
    validate(sub)
    return sub
