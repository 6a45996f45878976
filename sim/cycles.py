"""The cycle model: every op of an IntegerProgram mapped onto the units of an accelerator.

Unit cycle counts come from ``sim/timing.py`` (the contract with the RTL);
this module decides how each op uses the units and the buffers, and how the
units overlap.

**The array (weight-stationary, R x C PEs).** A linear ``(m x K) @ W.T``,
``W`` [N, K], runs as ``ceil(K/R) * ceil(N/C)`` weight folds per row tile,
loop nest: m-tile { n-fold { k-fold { load an R x C weight tile; stream the
tile's rows } } }. Its compute cycles are::

    sum over m-tiles mt of  timing.gemm_cycles(mt * p, K, N, R, C)
    = sum  ceil(K/R) * ceil(N/C) * (R + mt*p + R + C - 1)

where ``p = ceil(act_bits_of_x / act_bits)`` digit passes (``sim.timing.operand_digits``;
an 8-bit image on an int4 array streams each row twice, low digit unsigned,
high digit signed, the accumulator adding the second pass shifted by 4), times
the weight's digit planes where its weights are wider than the array's weight
port (``sim.intops.weight_digit_planes``: int5-int7 weights two, int8 two or three
on a 4-bit port). An
m-tile is as many rows as the accumulator buffer holds double-buffered for one
n-fold (``acc_bytes / (2 * C * 4)``), and, when the input comes from DRAM, as
many as half the activation buffer stages.

**Q.K^T** (``matmul``, transpose_b) runs per (sample, head): K^T [d_head x T]
is the stationary operand (loaded from the activation buffer instead of the
weight buffer), the T query rows stream: ``gemm_cycles(T*pa, d_head, T*pb)``.
Operands wider than a port take digit passes: ``pa`` on the streamed side
(extra rows), ``pb`` on the stationary side (extra columns).

**P.V with log2 codes** (``matmul_log2``) also runs per (sample, head): V [T x d_head]
is stationary and the 4-bit codes stream in on the activation port; in log2
mode a PE shifts its stationary value left by ``2**code_bits - 2 - code``
(zero for the zero code) instead of multiplying, plus, for the odd codes of
base-sqrt(2) codes, the constant shift-add by 181/256: ``gemm_cycles(T, T, d_head*pb)``.

**Vector units** (``timing.stream_cycles`` / per-row formulas): requant,
GELU: ``stream_cycles(n, lanes, latency)``; softmax and LayerNorm: rows x
``softmax_row_cycles`` / ``layernorm_row_cycles``, one row after the other.
Residual adds run on the requantizer lanes, one operand per lane per cycle
(``stream_cycles(2n)``); constant adds and mean pooling, one element per lane
per cycle.

**Overlap.** A requant whose input is an array op's int32 result (through
data-movement views only) is fused: it drains the accumulator buffer block by
block while the array computes the next n-fold, so only its tail is exposed:
``max(r_blk, r - a + ceil(a/F))`` for ``F`` output blocks, ``r`` requant and
``a`` array cycles, ``r_blk`` one block's requant. Every other op starts when
the previous one ends. DRAM transfers are double-buffered and overlap the
op's own compute; whatever exceeds it is a stall:
``cycles = exposed compute + max(0, ceil(dram_bytes / bytes_per_cycle) - window)``.

**Buffers and DRAM.** Program inputs start in DRAM, outputs end there;
parameters are read from DRAM once per inference, weights again for every
m-tile when a layer's weights do not fit the weight buffer. Activations live
in the activation buffer at their bit width (packed); a requant with per-channel
widths (``pack_bits``: group-wise packing, ``OpKind.row_bits``) stores each row
of channels at the sum of its channels' widths, in the activation buffer and in
DRAM alike, and the convolutions reading it move those bytes. Data-movement ops
(patchify, split, split_heads, merge_heads, concat_token, select_token) are
views that move nothing. Attention scores and codes exist one (sample, head)
at a time (the attention core runs head by head). When the live tensors
exceed the activation buffer, the one whose next use is farthest away is
written to DRAM (Belady's replacement over the op schedule) and its
consumers read it back from DRAM.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from sim import intops, timing
from sim.accel import AccelConfig, check_program
from sim.ops import OPS
from sim.program import IntegerProgram, Op
from sim.timing import ceil_div, operand_digits

BUILTIN = ("positions",)  # made on chip by a counter


@dataclass
class OpCost:
    """One op on the accelerator. ``cycles`` is what it adds to the latency."""

    name: str
    kind: str
    layer: str
    unit: str  #: array, requant, softmax, gelu, layernorm, dram (embedding lookups) or none (views)
    macs: int = 0  #: multiply-accumulates of the op's arithmetic
    array_macs: int = 0  #: PE operations, digit passes included
    compute_cycles: int = 0  #: the unit busy, from sim.timing
    dram_bytes: int = 0
    stall_cycles: int = 0
    cycles: int = 0
    fused_into: str | None = None  #: the array op whose accumulators a fused requant drains
    act_dram_bytes: int = 0  #: the part of ``dram_bytes`` that moves activations (not parameters)
    blocks: int = 1  #: output blocks of an array op (what a fused requant drains one at a time)
    actions: dict[str, int] = field(default_factory=dict)  #: energy actions -> count (sim.energy.ACTIONS)

    def count(self, action: str, n: int) -> None:
        if n:
            self.actions[action] = self.actions.get(action, 0) + int(n)


@dataclass(frozen=True)
class LayerCost:
    name: str
    cycles: int
    macs: int
    dram_bytes: int
    ops: int


@dataclass
class CycleReport:
    model: str
    accel: str
    batch: int
    seq_len: int | None  #: tokens used for run-time dimensions (None if the program has none)
    pes: int
    clock_mhz: float
    ops: list[OpCost]
    compulsory_dram_bytes: int
    activation: "ActivationTraffic | None" = None  #: what the analytic model's schedule stores (sim.cycles only)

    @property
    def cycles(self) -> int:
        return sum(o.cycles for o in self.ops)

    @property
    def latency_s(self) -> float:
        return self.cycles / (self.clock_mhz * 1e6)

    @property
    def macs(self) -> int:
        return sum(o.macs for o in self.ops)

    @property
    def array_macs(self) -> int:
        return sum(o.array_macs for o in self.ops)

    @property
    def dram_bytes(self) -> int:
        return sum(o.dram_bytes for o in self.ops)

    @property
    def stall_cycles(self) -> int:
        return sum(o.stall_cycles for o in self.ops)

    @property
    def utilization(self) -> float:
        """Useful MACs over what the array could do in the whole latency."""
        return self.macs / (self.pes * self.cycles) if self.cycles else 0.0

    def layers(self) -> list[LayerCost]:
        groups: dict[str, list[OpCost]] = {}
        for o in self.ops:
            groups.setdefault(o.layer, []).append(o)
        return [LayerCost(name, sum(o.cycles for o in ops), sum(o.macs for o in ops),
                          sum(o.dram_bytes for o in ops), len(ops)) for name, ops in groups.items()]


@dataclass(frozen=True)
class ActivationTraffic:
    """Activation memory traffic of one inference (parameters excluded), at the widths activations are stored.

    ``stored_bytes``: every activation tensor written to the activation buffer or DRAM once (the image
    included; accumulators drained in the pipeline and tiles passed to a fused projection are never
    stored); ``values``: how many values those tensors hold; ``dram_bytes``: activation bytes moved to and
    from DRAM (the image read, spills and their reads back, the outputs written).
    """

    stored_bytes: int
    values: int
    dram_bytes: int

    @property
    def bits_per_value(self) -> float:
        return 8 * self.stored_bytes / self.values if self.values else 0.0


def layer_of(op_name: str) -> str:
    """Group by name prefix up to the first numeric part ("blocks.3.fc1" -> "blocks.3"), else the first part."""
    parts = op_name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i + 1])
    return parts[0]


def _prod(xs) -> int:
    return math.prod(xs) if xs else 1


class _Plan:
    """Shapes, storage (views share their source's), accumulator fusion and activation-buffer residency."""

    def __init__(self, program: IntegerProgram, accel: AccelConfig, batch: int, seq_len: int):
        self.p, self.a, self.batch, self.seq_len = program, accel, batch, seq_len
        self.dims = {n: tuple(seq_len if d is None else d for d in t.shape) for n, t in program.tensors.items()}
        self.uses_seq = any(d is None for t in program.tensors.values() for d in t.shape)
        ops = program.ops
        self.root = {t.name: t.name for t in program.inputs}
        for op in ops:
            for out in op.outputs:
                self.root[out] = self.root[op.inputs[0]] if OPS[op.kind].role == "view" else out
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, op in enumerate(ops):
            if OPS[op.kind].role == "view":
                continue
            for out in op.outputs:
                self.producer[self.root[out]] = i
            for name in op.inputs:
                if name not in BUILTIN and i not in self.consumers[self.root[name]]:
                    self.consumers[self.root[name]].append(i)
        self.row_bits = {self.root[op.outputs[0]]: b for op in ops if (b := OPS[op.kind].row_bits(op)) is not None}
        self.size: dict[str, int] = defaultdict(int)
        for name in program.tensors:
            if name in self.root and name not in BUILTIN:
                self.size[self.root[name]] = max(self.size[self.root[name]], self.nbytes(name))
        self.members: dict[str, list[str]] = defaultdict(list)
        for name, s in self.root.items():
            self.members[s].append(name)
        self.outputs = {self.root[n] for n in program.outputs}
        self.inputs = {t.name for t in program.inputs}
        self.fused = self._fusion()
        self.in_pipe = {s for s, _ in self.fused.values()}  # never stored in the activation buffer
        self.footprint = {s: self._footprint(s) for s in self.size}
        self.evict_writes: dict[int, int] = defaultdict(int)
        self.spilled_at: dict[str, int] = {s: -1 for s in self.inputs}
        self._residency()

    def numel(self, name: str) -> int:
        return self.batch * _prod(self.dims[name])

    def nbytes(self, name: str) -> int:
        return self.stored_bytes(name, self.numel(name))

    def stored_bytes(self, name: str, values: int) -> int:
        """Bytes ``values`` values of ``name`` occupy where it is stored: the declared width each, or a packed
        tensor's row of channels at the sum of its channels' widths."""
        s = self.root[name]
        if s in self.row_bits:
            return ceil_div(values * self.row_bits[s], 8 * self.dims[name][-1])
        return ceil_div(values * self.p.tensors[name].bits, 8)

    def _only_consumer(self, s: str, i: int, unit: str) -> int | None:
        """The op that alone consumes storage ``s`` (made by op ``i``), if it can take it from ``unit``'s
        pipeline and only views lie between them."""
        if s in self.outputs or len(self.consumers[s]) != 1:
            return None
        j = self.consumers[s][0]
        if OPS[self.p.ops[j].kind].fuses_after == unit and all(
                OPS[op.kind].role == "view" for op in self.p.ops[i + 1:j]):
            return j
        return None

    def _fusion(self) -> dict[int, tuple[str, int]]:
        """The drain pipeline: op index -> (the storage it takes from the pipeline, the array op feeding it).

        A requant alone consuming an array op's int32 result drains the accumulator
        buffer; a GELU alone consuming that requant's output takes it straight from
        the requantizer. Neither intermediate touches the activation buffer.
        """
        fused = {}
        for s, i in self.producer.items():
            if OPS[self.p.ops[i].kind].role != "array":
                continue
            unit, k = "array", i
            while (j := self._only_consumer(s, k, unit)) is not None:  # array -> requant -> GELU
                fused[j] = (s, i)
                if OPS[self.p.ops[j].kind].role == "array":  # a projection on the drain: its own chain follows
                    break
                unit, k = OPS[self.p.ops[j].kind].unit, j
                s = self.root[self.p.ops[j].outputs[0]]
        return fused

    def _footprint(self, s: str) -> int:
        """Bytes a storage occupies while live; head-wise attention tensors one (sample, head) at a time."""
        members = self.members[s]
        kinds = [OPS[self.p.ops[i].kind] for i in self.consumers[s] + ([self.producer[s]] if s in self.producer else [])]
        if kinds and all(len(self.dims[n]) >= 3 for n in members) and all(k.headwise for k in kinds):
            return ceil_div(self.size[s], self.batch * _prod(self.dims[s][:-2]))
        return self.size[s]

    def _residency(self) -> None:
        cap = self.a.buffers.bytes("activation")
        ops = self.p.ops
        last = {s: max(c) for s, c in self.consumers.items() if c}
        resident: dict[str, int] = {}
        for i, op in enumerate(ops):
            role = OPS[op.kind].role
            if role == "view":
                continue
            ins = {self.root[n] for n in op.inputs if n not in BUILTIN}
            if role != "array":  # a streaming unit writes its output over inputs it reads for the last time
                for s in [s for s in ins if s in resident and last.get(s) == i]:
                    del resident[s]
            for out in op.outputs:
                s = self.root[out]
                if s in self.outputs:  # written straight to DRAM
                    self.spilled_at[s] = i
                elif s not in self.in_pipe:
                    resident[s] = self.footprint[s]
            used = sum(resident.values())
            if used > cap:
                def next_use(s):
                    return min((c for c in self.consumers[s] if c > i), default=len(ops))
                victims = sorted((s for s in resident if s not in ins), key=lambda s: (-next_use(s), -resident[s]))
                for s in victims:
                    if used <= cap:
                        break
                    used -= resident.pop(s)
                    self.spilled_at[s] = i
                    if self.producer.get(s) != i:
                        self.evict_writes[i] += self.size[s]
            for s in [s for s in resident if last.get(s, i) <= i]:
                del resident[s]

    def in_dram(self, name: str, i: int) -> bool:
        """Whether op ``i`` finds ``name`` in DRAM (a program input, or pushed out of the activation buffer)."""
        s = self.root[name]
        return name not in BUILTIN and s in self.spilled_at and self.spilled_at[s] < i

    def to_dram(self, name: str) -> bool:
        """Whether the op producing ``name`` writes it to DRAM (a program output, or no room when it is made)."""
        s = self.root[name]
        return s in self.spilled_at and self.spilled_at[s] == self.producer.get(s)


def _param_bytes(op: Op, plan: _Plan) -> dict[str, int]:
    """Bytes of each parameter as the accelerator stores it (read from DRAM once per inference)."""
    return OPS[op.kind].param_bytes(op, plan)


def _m_tiles(m: int, tile: int) -> list[int]:
    tile = max(1, min(m, tile))
    return [tile] * (m // tile) + ([m % tile] if m % tile else [])


class _Mapper:
    def __init__(self, plan: _Plan):
        self.plan, self.a = plan, plan.a
        arr = plan.a.array
        self.R, self.C = arr.rows, arr.cols
        self.acc_bytes = arr.acc_bits // 8
        self.acc_rows = plan.a.buffers.bytes("accumulator") // (2 * self.C * self.acc_bytes)

    # inputs and outputs through the activation buffer or DRAM
    def read_input(self, c: OpCost, i: int, name: str, times: int = 1, read_bytes: int | None = None) -> None:
        """The unit reads ``name`` ``times`` from the activation buffer (``read_bytes`` a time where it reads
        more or less than the tensor's bytes, e.g. a convolution's overlapping patches), staged there from
        DRAM if spilled."""
        b = self.plan.nbytes(name)
        if self.plan.in_dram(name, i):
            c.count("dram", b)
            c.act_dram_bytes += b
            c.count("sram_activation_write", b)
        c.count("sram_activation_read", (b if read_bytes is None else read_bytes) * times)

    def read_inputs(self, c: OpCost, i: int, op: Op) -> None:
        """Every input of op ``i`` once (built-in tensors are made on chip)."""
        for name in op.inputs:
            if name not in BUILTIN:
                self.read_input(c, i, name)

    def write_output(self, c: OpCost, name: str) -> None:
        if self.plan.root[name] in self.plan.in_pipe:  # handed to the next stage of the drain pipeline
            return
        b = self.plan.nbytes(name)
        if self.plan.to_dram(name):
            c.count("dram", b)
            c.act_dram_bytes += b
        else:
            c.count("sram_activation_write", b)

    def params(self, c: OpCost, op: Op, loads: int = 1) -> None:
        c.count("dram", sum(_param_bytes(op, self.plan).values()) * loads)

    def accumulate(self, c: OpCost, outputs: int, passes: int, op: Op) -> None:
        """Partial sums: a read-modify-write per output per k-fold and pass (the first write adds the bias)."""
        b = outputs * self.acc_bytes
        c.count("sram_accumulator_write", b * passes)
        c.count("sram_accumulator_read", b * (passes - 1))
        if self.plan.root[op.outputs[0]] not in self.plan.in_pipe:  # drained by the array, not by a requant
            c.count("sram_accumulator_read", b)
            self.write_output(c, op.outputs[0])

    # ------------------------------------------------------------- units
    def linear(self, c: OpCost, i: int, op: Op) -> None:
        x = op.inputs[0]
        n, k = op.params["weight"].shape
        self.weight_product(c, i, op, self.plan.batch * _prod(self.plan.dims[x][:-1]), k, n, 1)

    def conv(self, c: OpCost, i: int, op: Op) -> None:
        """A convolution as the products of its patches, one group after the other: ``groups`` products of
        ``m = Ho*Wo`` patch rows (``K = kh*kw*C/groups`` long) by the group's ``N = O/groups`` filters, each
        tiled like a linear. A depthwise convolution (``N = 1``) keeps one column of the array busy: what a
        weight-stationary array does with it. The activation buffer is read once per patch tap (the patch
        rows overlap by the kernel's reach), per n-fold."""
        o_ch, kh, kw, cg = op.params["weight"].shape
        groups = op.attrs["groups"]
        ho, wo, _ = self.plan.dims[op.outputs[0]]
        m, k = self.plan.batch * ho * wo, kh * kw * cg
        self.weight_product(c, i, op, m, k, o_ch // groups, groups, self.plan.stored_bytes(op.inputs[0], m * k * groups))

    def weight_product(self, c: OpCost, i: int, op: Op, m: int, k: int, n: int, groups: int,
                       read_bytes: int | None = None, pack: int = 1, action: str = "mac") -> None:
        """``groups`` products of ``m`` streamed rows (``k`` long) by ``n`` stationary weight columns each,
        one group after the other; the streamed operand is op ``i``'s first input, staged from DRAM when
        spilled, and the array reads it (``read_bytes`` of it, if given) from the activation buffer per
        n-fold. ``pack`` products of the reduction share one PE operation (a binary mode), ``action`` each."""
        x = op.inputs[0]
        bits = self.plan.p.tensors[x].bits
        # every weight digit plane against every digit of x
        p = operand_digits(bits, self.a.array.act_bits) * intops.weight_digits(op.params["weight"],
                                                                               self.a.array.weight_bits)
        staged = self.plan.in_dram(x, i)
        tile = self.acc_rows
        if staged:
            tile = min(tile, self.a.buffers.bytes("activation") // 2 // self.plan.stored_bytes(x, k * groups))
        tiles = _m_tiles(m, tile)
        kp = ceil_div(k, pack)  # reduction indices as the array's rows see them
        c.compute_cycles = groups * sum(timing.gemm_cycles(mt * p, kp, n, self.R, self.C) for mt in tiles)
        c.macs = m * k * n * groups
        c.array_macs = m * kp * n * groups * p
        c.blocks = groups * len(tiles) * ceil_div(n, self.C)
        w = sum(_param_bytes(op, self.plan).values())
        loads = 1 if w <= self.a.buffers.bytes("weight") else len(tiles)
        self.params(c, op, loads)
        c.count("sram_weight_write", w * loads)
        c.count("sram_weight_read", w * len(tiles))
        self.read_input(c, i, x, times=ceil_div(n, self.C), read_bytes=read_bytes)
        c.count(action, c.array_macs)
        self.accumulate(c, m * n * groups, ceil_div(kp, self.R) * p, op)

    def array_product(self, c: OpCost, i: int, op: Op, n: int, pa: int, action: str, pack: int = 1) -> None:
        """An activation x activation product, run per (sample, head): the second operand is stationary
        (loaded from the activation buffer), the first streams in ``pa`` digit passes; ``n`` output columns;
        ``pack`` products of the reduction share one PE operation (a binary mode)."""
        a_name, b_name = op.inputs
        da = self.plan.dims[a_name]
        mm, k = da[-2], da[-1]
        kp = ceil_div(k, pack)  # reduction indices as the array's rows see them
        b = self.plan.p.tensors[b_name]
        pb = intops.signed_digits(b.bits, self.a.array.weight_bits, b.signed)
        items = self.plan.batch * _prod(da[:-2])
        tiles = _m_tiles(mm, self.acc_rows)
        c.compute_cycles = items * sum(timing.gemm_cycles(mt * pa, kp, n * pb, self.R, self.C) for mt in tiles)
        c.macs = items * mm * k * n
        c.array_macs = items * mm * kp * n * pa * pb
        c.blocks = items * len(tiles) * ceil_div(n * pb, self.C)
        self.read_input(c, i, b_name, times=len(tiles))  # the stationary operand, once per m-tile
        self.read_input(c, i, a_name, times=ceil_div(n * pb, self.C))  # streamed once per n-fold
        c.count(action, c.array_macs)
        self.accumulate(c, items * mm * n, ceil_div(kp, self.R) * pa * pb, op)

    def stream(self, c: OpCost, i: int, op: Op, unit, beats: int, fused: bool) -> None:
        """An element-wise unit (``unit``: its lanes and latency) busy for ``beats`` element beats.

        Unfused, it reads every input from the activation buffer; fused, its input comes from the stage
        before it in the drain pipeline (the cost hook counts an accumulator read where that is the source).
        """
        c.compute_cycles = timing.stream_cycles(beats, unit.lanes, unit.latency)
        if not fused:
            self.read_inputs(c, i, op)
        self.params(c, op)
        self.write_output(c, op.outputs[0])

    def rows_unit(self, c: OpCost, i: int, op: Op, unit, row_cycles, action: str) -> None:
        """A vector unit that works one row of its first input after the other (softmax, LayerNorm):
        ``row_cycles(width, lanes, latency)`` a row, ``action`` per element and ``action_row`` per row."""
        x = op.inputs[0]
        width = self.plan.dims[x][-1]
        n = self.plan.numel(x)
        rows = n // width
        c.compute_cycles = rows * row_cycles(width, unit.lanes, unit.latency)
        c.count(action, n)
        c.count(action + "_row", rows)
        self.read_inputs(c, i, op)
        self.params(c, op)
        self.write_output(c, op.outputs[0])

    @staticmethod
    def drain_tail(busy: int, n: int, blocks: int, upstream: int, lanes: int, latency: int) -> int:
        """Exposed cycles of a drain-pipeline stage busy ``busy`` cycles on ``n`` elements in ``blocks`` blocks.

        It works on block b while the stages before it (the slowest busy
        ``upstream`` cycles) produce block b+1: only its last block shows, or its
        excess over the slowest stage before it.
        """
        last = timing.stream_cycles(ceil_div(n, blocks), lanes, latency)
        return max(last, busy - upstream + ceil_div(upstream, blocks))


def program_cycles(program: IntegerProgram, accel: AccelConfig, *, batch: int = 1, seq_len: int = 128) -> CycleReport:
    """Cycles, DRAM traffic and energy actions of every op of ``program`` on ``accel``.

    ``seq_len`` fixes the run-time token dimension of text programs; ``batch``
    samples run together (weights are loaded once for all of them).
    """
    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch ({batch}) and seq_len ({seq_len}) must be at least 1")
    check_program(program, accel, seq_len)
    plan = _Plan(program, accel, batch, seq_len)
    mapper = _Mapper(plan)
    bw = accel.dram_bytes_per_cycle
    costs: list[OpCost] = []
    by_index: dict[int, OpCost] = {}
    upstream: dict[int, int] = {}  # array op -> busy cycles of the slowest drain-pipeline stage so far
    for i, op in enumerate(program.ops):
        kind = OPS[op.kind]
        c = OpCost(op.name, op.kind, layer_of(op.name), kind.unit)
        array = by_index[plan.fused[i][1]] if i in plan.fused else None
        kind.cost(mapper, c, i, op, array is not None)
        if plan.evict_writes.get(i):  # live tensors pushed out to DRAM to make room
            c.count("sram_activation_read", plan.evict_writes[i])
            c.count("dram", plan.evict_writes[i])
            c.act_dram_bytes += plan.evict_writes[i]
        if array is None or kind.role == "array":  # a product on another's drain waits for the array
            c.cycles = window = c.compute_cycles
            c.fused_into = None if array is None else array.name
        else:
            unit = getattr(accel, kind.unit)
            k = plan.fused[i][1]
            up = upstream.setdefault(k, array.compute_cycles)
            c.fused_into = array.name
            c.cycles = mapper.drain_tail(c.compute_cycles, plan.numel(op.inputs[0]), array.blocks, up, unit.lanes,
                                         unit.latency)
            upstream[k] = max(up, c.compute_cycles)
            window = array.compute_cycles + c.cycles
        c.dram_bytes = c.actions.get("dram", 0)
        c.stall_cycles = max(0, math.ceil(c.dram_bytes / bw) - window)
        c.cycles += c.stall_cycles
        costs.append(c)
        by_index[i] = c
    return CycleReport(program.model, accel.name, batch, seq_len if plan.uses_seq else None, accel.pes,
                       accel.clock_mhz, costs, compulsory_dram_bytes(plan), activation_traffic(plan, costs))


def activation_traffic(plan: _Plan, costs: list[OpCost]) -> ActivationTraffic:
    """The activation figures of a priced program (:class:`ActivationTraffic`)."""
    stored = [s for s in plan.size if s not in plan.in_pipe and (s in plan.inputs or s in plan.producer)]
    return ActivationTraffic(sum(plan.size[s] for s in stored), sum(plan.numel(s) for s in stored),
                             sum(c.act_dram_bytes for c in costs))


def compulsory_dram_bytes(plan: _Plan) -> int:
    """Bytes no schedule avoids: program inputs read, parameters read once, program outputs written."""
    p = plan.p
    read = sum(plan.nbytes(t.name) for t in p.inputs if plan.consumers.get(t.name))
    params = sum(sum(_param_bytes(op, plan).values()) for op in p.ops)
    return read + params + sum(plan.nbytes(n) for n in p.outputs)


def utilization(cost: OpCost, pes: int) -> float:
    """Useful MACs over the array's capacity during the op's compute cycles (0 for other units)."""
    return cost.macs / (pes * cost.compute_cycles) if cost.macs and cost.compute_cycles else 0.0
