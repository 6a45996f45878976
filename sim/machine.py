"""The instruction-level model of the joined accelerator: the reference ``hw.accelerator`` is checked against.

:func:`run` executes a DRAM memory image (``sim.compile.Compiled.image``) the way the controller of
``sim.isa`` does: it fetches the instruction at beat ``pc * instr_beats``, decodes it with
:func:`sim.isa.decode`, runs it to completion and fetches the next, until ``end``. Its state is what the
ISA lays out, as integer numpy arrays:

* ABUF: ``abuf_words`` x ``V`` int32 lanes (:class:`Geometry`);
* WBUF: ``wbuf_words`` x ``V`` signed ``weight_bits`` weights;
* the requantizer table: ``REQUANT_CHANNELS`` entries ``(M, shift, zero point)``;
* the GELU table: ``2**in_bits`` signed ``out_bits`` entries, indexed by ``x + 2**(in_bits-1)``;
* the LayerNorm table: ``LAYERNORM_MAX_N / V`` entries of ``V`` lanes ``(gamma, beta, in_shift)``.

Every unit result is a call into ``sim.intops`` (the one integer semantics); the controller itself only
moves words, cuts operands into digits and adds each fold's partial sums into the accumulator (exact
integers, saturated to int32 as they drain). Each retired instruction carries its cycles,
:func:`sim.isa.instr_cycles`. A fault (an address outside a buffer, the image or a table, a count of 0,
an unknown opcode, no ``end``, result words that overlap the ABUF words the instruction reads) is a
:class:`MachineError` naming the pc and the field; where the RTL
stops at an unknown opcode as at ``end``, the model raises, so that a stream that reaches one is caught.

The DRAM item codecs (:func:`encode_items`, :func:`decode_items`) are the one definition of how words and
table entries sit in beats; the compiler writes the image with them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim import intops, isa, widths
from sim.accel import (LAYERNORM_MAX_N, REQUANT_CHANNELS, AccelConfig, AccelError, layernorm_params,
                       mac_array_params, requant_params, softmax_params)
from sim.isa import Instr


_COUNTS = ("count", "m", "kf", "nf", "digits", "w_digits", "rows", "words")  #: fields the ISA has at least 1


class MachineError(RuntimeError):
    """A fault of the instruction stream: names the pc, the op and the field."""


# ------------------------------------------------------------------ the machine's sizes
@dataclass(frozen=True)
class Geometry:
    """The joined accelerator's memories and DRAM item sizes (``sim.isa``), from its description."""

    v: int  #: the vector width: array rows = columns = every vector unit's lanes
    beat_bytes: int
    act_bits: int
    weight_bits: int
    abuf_words: int
    wbuf_words: int
    max_m: int  #: rows one gemm streams (the accumulator buffer's double-buffered rows)
    code_bits: int  #: the log2 codes the array decodes
    gelu_in_bits: int
    gelu_out_bits: int
    mult_bits: int
    shift_bits: int
    rq_out_bits: int  #: the requantizer's widest output (its zero point is one bit wider, signed)
    gamma_bits: int
    beta_bits: int
    ln_entries: int

    @classmethod
    def of(cls, accel: AccelConfig) -> "Geometry":
        """Raise :class:`AccelError` for a description the joined accelerator cannot be built from."""
        arr, v = accel.array, accel.array.rows
        widths_of = {"array.cols": arr.cols, "units.requant.lanes": accel.requant.lanes,
                     "units.softmax.lanes": accel.softmax.lanes, "units.gelu.lanes": accel.gelu.lanes,
                     "units.layernorm.lanes": accel.layernorm.lanes}
        for name, n in widths_of.items():
            if n != v:
                raise AccelError(f"{accel.name}: field {name!r}: {n}; the joined accelerator needs every vector "
                                 f"width equal to array.rows ({v})")
        bb = accel.dram_bytes_per_cycle
        if bb != int(bb) or int(bb) & (int(bb) - 1):
            raise AccelError(f"{accel.name}: field 'dram_bytes_per_cycle': {bb}; the memory port moves a whole "
                             f"power-of-two number of bytes a beat (1, 2, 4, 8, ...)")
        rq, ln = requant_params(accel), layernorm_params(accel)
        g = cls(v=v, beat_bytes=int(bb), act_bits=arr.act_bits, weight_bits=arr.weight_bits,
                   abuf_words=accel.buffers.bytes("activation") // (4 * v),
                   wbuf_words=accel.buffers.bytes("weight") * 8 // (v * arr.weight_bits),
                   max_m=mac_array_params(accel)["max_m"], code_bits=mac_array_params(accel)["code_bits"],
                   gelu_in_bits=accel.gelu.in_bits, gelu_out_bits=accel.gelu.out_bits, mult_bits=rq["mult_bits"],
                   shift_bits=rq["shift_bits"], rq_out_bits=rq["out_bits"], gamma_bits=ln["gamma_bits"],
                   beta_bits=ln["beta_bits"], ln_entries=LAYERNORM_MAX_N // v)
        for target in isa.TARGETS:  # the item layouts below add up to what the ISA moves
            assert g.item_bits(target) == isa.load_item_bits(target, accel), target
        return g

    @property
    def instr_beats(self) -> int:
        return isa.instr_beats(self.beat_bytes)

    def item_bits(self, target: str) -> int:
        """Bits of one item of ``target`` (``sim.isa.TARGETS``; ABUF words for ``store``)."""
        return sum(bits for bits, _ in self.entry_fields(target)) * _lanes_per_item(target, self)

    def item_beats(self, target: str) -> int:
        return isa.beats(self.item_bits(target), self.beat_bytes)

    def capacity(self, target: str) -> int:
        """Items ``target`` holds."""
        return {"abuf": self.abuf_words, "wbuf": self.wbuf_words, "requant": REQUANT_CHANNELS,
                "gelu": 1 << self.gelu_in_bits, "layernorm": self.ln_entries}[target]

    def entry_fields(self, target: str) -> tuple[tuple[int, bool], ...]:
        """(bits, signed) of the fields of one lane (words) or one entry (tables), low bits first."""
        if target == "abuf":
            return ((32, True),)
        if target == "wbuf":
            return ((self.weight_bits, True),)
        if target == "requant":
            return ((self.mult_bits, False), (self.shift_bits, False), (self.rq_out_bits + 1, True))
        if target == "gelu":
            return ((self.gelu_out_bits, True),)
        return ((self.gamma_bits, True), (self.beta_bits, True), (2, False))


# ------------------------------------------------------------------ DRAM items
def _lanes_per_item(target: str, g: Geometry) -> int:
    return g.v if target in ("abuf", "wbuf", "layernorm") else 1


def encode_items(target: str, values: np.ndarray, g: Geometry) -> np.ndarray:
    """``count`` items of ``target`` as DRAM beats, uint8 ``(count * item_beats, beat_bytes)``.

    ``values``: ``(count, V)`` lanes for ``abuf`` / ``wbuf``, ``(count, 3)`` ``(M, shift, zero point)`` for
    ``requant``, ``(count,)`` for ``gelu``, ``(count, V, 3)`` ``(gamma, beta, in_shift)`` for ``layernorm``.
    An item's bits: lane (or field) ``i`` above lane ``i - 1``, two's complement, little-endian across the
    item's beats, zero past its last bit. Each value must fit its field.
    """
    fields = g.entry_fields(target)
    lanes = _lanes_per_item(target, g)
    vals = np.asarray(values, dtype=np.int64).reshape(-1, lanes, len(fields))
    for k, (bits, signed) in enumerate(fields):
        lo, hi = intops.int_range(bits, signed)
        col = vals[..., k]
        if col.size and (col.min() < lo or col.max() > hi):
            bad = int(col.min()) if col.min() < lo else int(col.max())
            raise ValueError(f"{target} item field {k}: {bad} outside [{lo}, {hi}]")
    nbytes = g.item_beats(target) * g.beat_bytes
    if len(fields) == 1 and fields[0][0] in (4, 8, 16, 32):  # whole lanes: numpy
        bits = fields[0][0]
        raw = _pack_nibbles(vals[..., 0]) if bits == 4 else vals[..., 0].astype(f"<i{bits // 8}").view(np.uint8)
        raw = raw.reshape(len(vals), -1)
        out = np.zeros((len(vals), nbytes), np.uint8)
        out[:, :raw.shape[1]] = raw
    else:
        out = np.array([list(_entry_int(item, fields).to_bytes(nbytes, "little")) for item in vals.tolist()],
                       dtype=np.uint8).reshape(len(vals), nbytes)
    return out.reshape(-1, g.beat_bytes)


def decode_items(target: str, raw: np.ndarray, g: Geometry) -> np.ndarray:
    """The inverse of :func:`encode_items`: beats ``(count * item_beats, beat_bytes)`` -> values."""
    fields = g.entry_fields(target)
    lanes = _lanes_per_item(target, g)
    items = np.asarray(raw, np.uint8).reshape(-1, g.item_beats(target) * g.beat_bytes)
    if len(fields) == 1 and fields[0][0] in (4, 8, 16, 32):
        bits = fields[0][0]
        used = items[:, :lanes * bits // 8]
        vals = _unpack_nibbles(used) if bits == 4 else used.copy().view(f"<i{bits // 8}").astype(np.int64)
        vals = vals.reshape(len(items), lanes)
    else:
        vals = np.array([_entry_fields(int.from_bytes(bytes(item), "little"), fields, lanes) for item in items],
                        dtype=np.int64).reshape(len(items), lanes, len(fields))
    if target == "requant":
        return vals.reshape(-1, 3)
    if target == "gelu":
        return vals.reshape(-1)
    return vals


def _pack_nibbles(v: np.ndarray) -> np.ndarray:
    u = (v & 0xF).astype(np.uint8).reshape(v.shape[0], -1)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def _unpack_nibbles(b: np.ndarray) -> np.ndarray:
    u = np.stack([b & 0xF, b >> 4], axis=-1).reshape(b.shape[0], -1).astype(np.int64)
    return u - ((u >> 3) << 4)


def _entry_int(item: list, fields) -> int:
    word, pos = 0, 0
    for lane in item:
        for value, (bits, _) in zip(lane, fields):
            word |= (value & ((1 << bits) - 1)) << pos
            pos += bits
    return word


def _entry_fields(word: int, fields, lanes: int) -> list:
    out, pos = [], 0
    for _ in range(lanes):
        lane = []
        for bits, signed in fields:
            f = word >> pos & ((1 << bits) - 1)
            lane.append(f - (1 << bits) if signed and f >> (bits - 1) else f)
            pos += bits
        out.append(lane)
    return out


def instr_to_beats(instr: Instr, g: Geometry) -> np.ndarray:
    """One instruction's beats in DRAM (``sim.isa.encode``, slot 0 in the low bits of the first beat)."""
    nbytes = g.instr_beats * g.beat_bytes
    return np.frombuffer(isa.encode(instr).to_bytes(nbytes, "little"), np.uint8).reshape(-1, g.beat_bytes)


# ------------------------------------------------------------------ running
@dataclass(frozen=True)
class Retired:
    pc: int
    instr: Instr
    cycles: int  #: sim.isa.instr_cycles, fetch included


@dataclass
class MachineRun:
    image: np.ndarray  #: DRAM after the run (the stores written)
    retired: list[Retired]

    @property
    def cycles(self) -> int:
        return sum(r.cycles for r in self.retired)


def run(image: np.ndarray, accel: AccelConfig, *, max_instructions: int = 1 << 20) -> MachineRun:
    """Execute ``image`` (uint8 ``(beats, beat_bytes)``) from beat 0 until ``end``; DRAM is not modified in place."""
    m = _Machine(np.array(image, dtype=np.uint8), accel)
    retired = []
    pc = 0
    while True:
        if pc >= max_instructions:
            raise MachineError(f"pc {pc}: no 'end' after {max_instructions} instructions")
        instr = m.fetch(pc)
        m.execute(pc, instr)
        retired.append(Retired(pc, instr, isa.instr_cycles(instr, accel)))
        if instr.op == "end":
            return MachineRun(m.dram, retired)
        pc += 1


class _Machine:
    def __init__(self, dram: np.ndarray, accel: AccelConfig):
        g = self.g = Geometry.of(accel)
        if dram.ndim != 2 or dram.shape[1] != g.beat_bytes:
            raise MachineError(f"image: shape {dram.shape}, the memory port takes beats of {g.beat_bytes} bytes")
        self.dram, self.accel = dram, accel
        self.abuf = np.zeros((g.abuf_words, g.v), np.int32)
        self.wbuf = np.zeros((g.wbuf_words, g.v), np.int8 if g.weight_bits <= 8 else np.int16)
        self.tables = {"requant": np.zeros((REQUANT_CHANNELS, 3), np.int64),
                       "gelu": np.zeros(1 << g.gelu_in_bits, np.int64),
                       "layernorm": np.zeros((g.ln_entries, g.v, 3), np.int64)}
        self.sm, self.ln = softmax_params(accel), layernorm_params(accel)
        self.reads: dict[str, np.ndarray] = {}  # the ABUF words the executing instruction reads, by field

    # ---------------------------------------------------------------- fetch
    def fetch(self, pc: int) -> Instr:
        ib = self.g.instr_beats
        if (pc + 1) * ib > len(self.dram):
            raise MachineError(f"pc {pc}: fetch from beat {pc * ib}, past the image's {len(self.dram)} beats")
        word = int.from_bytes(self.dram[pc * ib:(pc + 1) * ib].tobytes(), "little")
        try:
            return isa.decode(word)
        except isa.IsaError as exc:
            raise MachineError(f"pc {pc}: field 'opcode': {exc}") from None

    def execute(self, pc: int, instr: Instr) -> None:
        self.reads = {}
        for name in _COUNTS:
            if name in isa.FORMATS[instr.op] and instr[name] < 1:
                raise MachineError(f"pc {pc} ({instr.op}): field {name!r}: {instr[name]}, counts are at least 1")
        if instr.op == "gemm":
            self._check_gemm(pc, instr)
        if instr.op == "load":
            self._load(pc, instr)
        elif instr.op == "store":
            self._store(pc, instr)
        elif instr.op == "gemm":
            self._gemm(pc, instr)
        elif instr.op == "vector":
            self._vector(pc, instr)

    def _check_gemm(self, pc: int, ins: Instr) -> None:
        most = isa.max_digits(self.accel)
        if ins["digits"] > most:
            raise MachineError(f"pc {pc} (gemm): field 'digits': {ins['digits']} past the {most} an operand may take")
        most = isa.max_weight_digits(self.accel)
        if ins["w_digits"] > most:
            raise MachineError(f"pc {pc} (gemm): field 'w_digits': {ins['w_digits']} past the {most} a stationary "
                               f"operand may take")
        if ins["mode"] in ("matmul", "matmul_kn") and ins["unsigned_digits"]:
            raise MachineError(f"pc {pc} (gemm): mode {ins['mode']!r} streams balanced signed digits "
                               f"(unsigned_digits 0)")
        if ins["mode"] == "matmul_kn" and ins.flag("bias"):
            raise MachineError(f"pc {pc} (gemm): mode 'matmul_kn' reads its stationary beats through the bias port "
                               f"(no bias)")
        if ins["mode"] == "log2" and (ins["digits"] != 1 or ins["unsigned_digits"] or ins.flag("bias")):
            raise MachineError(f"pc {pc} (gemm): mode 'log2' streams one code digit without a bias (from {ins.fields})")

    # ---------------------------------------------------------------- addresses
    def _check(self, pc: int, instr: Instr, field: str, lo: int, hi: int, size: int, what: str) -> None:
        """Items ``[lo, hi]`` reached through ``field`` must lie in ``[0, size)``."""
        if lo < 0 or hi >= size:
            raise MachineError(f"pc {pc} ({instr.op}): field {field!r}: items [{lo}, {hi}] outside {what}'s "
                               f"{size} (from {instr.fields})")

    def _dram(self, pc: int, instr: Instr, beats: int) -> slice:
        start = instr["dram"]
        if beats:
            self._check(pc, instr, "dram", start, start + beats - 1, len(self.dram), "the image")
        return slice(start, start + beats)

    def _words(self, pc: int, instr: Instr, field: str, idx: np.ndarray, read: bool = True) -> np.ndarray:
        if idx.size:
            self._check(pc, instr, field, int(idx.min()), int(idx.max()), self.g.abuf_words, "ABUF")
        if read:
            self.reads[field] = np.concatenate([self.reads.get(field, np.empty(0, np.int64)), idx.ravel()])
        return idx

    def _result_words(self, pc: int, instr: Instr, field: str, idx: np.ndarray) -> np.ndarray:
        """ABUF words an instruction writes through ``field``: none may be one it reads (``sim.isa``: the RTL
        streams reads and writes side by side, where this model reads every operand first)."""
        self._words(pc, instr, field, idx, read=False)
        for name, read in self.reads.items():
            common = np.intersect1d(idx, read)
            if common.size:
                raise MachineError(f"pc {pc} ({instr.op}): field {field!r}: result word {int(common[0])} is also "
                                   f"read through {name!r} (from {instr.fields})")
        return idx

    # ---------------------------------------------------------------- load / store
    def _load(self, pc: int, instr: Instr) -> None:
        target, addr, count = instr["target"], instr["addr"], instr["count"]
        g = self.g
        raw = self.dram[self._dram(pc, instr, count * g.item_beats(target))]
        if count:
            self._check(pc, instr, "addr", addr, addr + count - 1, g.capacity(target), target)
        values = decode_items(target, raw, g)
        if target == "abuf":
            self.abuf[addr:addr + count] = values
        elif target == "wbuf":
            self.wbuf[addr:addr + count] = values
        else:
            self.tables[target][addr:addr + count] = values

    def _store(self, pc: int, instr: Instr) -> None:
        addr, count = instr["addr"], instr["count"]
        if count:
            self._check(pc, instr, "addr", addr, addr + count - 1, self.g.abuf_words, "ABUF")
        dst = self._dram(pc, instr, count * self.g.item_beats("abuf"))
        self.dram[dst] = encode_items("abuf", self.abuf[addr:addr + count], self.g)

    # ---------------------------------------------------------------- the array
    def _gemm(self, pc: int, ins: Instr) -> None:
        g, v = self.g, self.g.v
        m, kf, nf, digits = ins["m"], ins["kf"], ins["nf"], ins["digits"]
        t = np.arange(m)[:, None]
        x_idx = self._words(pc, ins, "x_base", ins["x_base"] + t * ins["x_stride"] + np.arange(kf)[None, :])
        x = self.abuf[x_idx].reshape(m, kf * v).astype(np.int64)  # lane r of word i is reduction index i V + r
        acc = np.zeros((m, nf * v), np.int64)
        if ins.flag("bias"):
            acc += self.abuf[self._words(pc, ins, "bias_base", ins["bias_base"] + np.arange(nf))].reshape(-1)
        # every fold (j, i, e, d) at once, one product a digit pair: exact sums, whose order does not matter
        for e in range(ins["w_digits"]):
            tiles = np.concatenate([self._stationary(pc, ins, j, e) for j in range(nf)], axis=1)  # [kf V, nf V]
            for d in range(digits):
                acc += self._partial(ins, x, tiles, d).astype(np.int64) << ((d + e) * g.act_bits)
        out = self._drain(pc, ins, intops.saturate(acc, widths.ACC_BITS))
        o_idx = self._result_words(pc, ins, "out_base",
                                   ins["out_base"] + t * ins["out_stride"] + np.arange(nf)[None, :])
        self.abuf[o_idx] = out.reshape(m, nf, v)

    def _stationary(self, pc: int, ins: Instr, j: int, e: int = 0) -> np.ndarray:
        """The ``kf`` stationary tiles of column block ``j`` (weight digit ``e``) stacked: row ``i V + r``,
        column ``c``."""
        v, kf, mode = self.g.v, ins["kf"], ins["mode"]
        r = np.arange(kf * v)  # reduction index i V + r
        c = np.arange(v)
        if mode == "linear":
            i, rr = r // v, r % v
            idx = ins["s_base"] + ((j * kf + i) * ins["w_digits"] + e) * v + rr
            if idx.size:
                self._check(pc, ins, "s_base", int(idx.min()), int(idx.max()), self.g.wbuf_words, "WBUF")
            return self.wbuf[idx].astype(np.int64)
        if mode == "matmul":  # lane r of word (j V + c) * s_stride + i, i.e. b[j V + c, i V + r]
            rows = j * v + c
            idx = ins["s_base"] + rows[None, :] * ins["s_stride"] + (r // v)[:, None]
            keep = (rows < ins["s_valid"])[None, :]
            lane = (r % v)[:, None]
        else:  # log2, matmul_kn: lane c of word (i V + r) * s_stride + j, i.e. V[i V + r, j V + c]
            idx = np.broadcast_to((ins["s_base"] + r * ins["s_stride"] + j)[:, None], (kf * v, v))
            keep = (r < ins["s_valid"])[:, None]
            lane = c[None, :]
        idx = np.where(keep, idx, 0)
        self._words(pc, ins, "s_base", idx[np.broadcast_to(keep, idx.shape)])
        vals = self.abuf[idx, np.broadcast_to(lane, idx.shape)].astype(np.int64)
        # the weight port takes digit e of the balanced digits (with one digit: the low bits)
        return np.where(keep, intops.balanced_digit(vals, e, ins["w_digits"], self.g.weight_bits), 0)

    def _partial(self, ins: Instr, x: np.ndarray, tile: np.ndarray, d: int) -> np.ndarray:
        """One digit's partial sums of the streamed rows against the stacked tiles."""
        a = self.g.act_bits
        if ins["mode"] == "log2":
            codes = x & ((1 << self.g.code_bits) - 1)
            return intops.exact_matmul(intops.log2_weights(codes, self.g.code_bits, ins.flag("sqrt2")), tile)
        if ins["mode"] in ("matmul", "matmul_kn"):  # an activation x activation product: balanced signed digits
            return intops.exact_matmul(intops.balanced_digit(x, d, ins["digits"], a), tile)
        field = (x >> (d * a)) & ((1 << a) - 1)
        if ins["unsigned_digits"] >> d & 1:
            digit = field - (1 << (a - 1))  # the top bit inverted: a signed value on the port
        else:
            digit = field - ((field >> (a - 1)) << a)  # sign-extended
        return intops.exact_matmul(digit, tile)

    def _drain(self, pc: int, ins: Instr, acc: np.ndarray) -> np.ndarray:
        """The epilogue on the saturated accumulators ``[m, nf V]``; lanes past ``n_valid`` written 0."""
        out = acc
        if ins.flag("requant"):
            out = self._requant(pc, ins, out)
            if ins.flag("gelu"):
                out = self._gelu(out)
        return _zero_past(out, ins["n_valid"])

    # ---------------------------------------------------------------- the vector units
    def _requant(self, pc: int, ins: Instr, x: np.ndarray) -> np.ndarray:
        """Lane ``k`` of a row (``j V + c`` or ``w V + c``) through entry ``ch_base + k`` (``ch_base`` per tensor)."""
        n, base = x.shape[-1], ins["ch_base"]
        idx = np.full(n, base) if ins.flag("per_tensor") else base + np.arange(n)
        self._check(pc, ins, "ch_base", int(idx.min()), int(idx.max()), REQUANT_CHANNELS, "the requantizer table")
        e = self.tables["requant"][idx]
        return intops.requantize(x, e[:, 0], e[:, 1], ins["out_bits"], e[:, 2], ins.flag("signed"))

    def _gelu(self, x: np.ndarray) -> np.ndarray:
        return intops.gelu(_low_bits(x, self.g.gelu_in_bits), self.tables["gelu"], self.g.gelu_in_bits)

    def _rows(self, pc: int, ins: Instr, which: str) -> np.ndarray:
        """ABUF indices ``[rows, words]`` of operand ``which`` (``a``, ``b`` or ``out``)."""
        row = np.arange(ins["rows"])[:, None] * ins[f"{which}_stride"]
        idx = ins[f"{which}_base"] + row + np.arange(ins["words"])[None, :]
        if which == "out":
            return self._result_words(pc, ins, "out_base", idx)
        return self._words(pc, ins, f"{which}_base", idx)

    def _vector(self, pc: int, ins: Instr) -> None:
        rows, words, n, unit = ins["rows"], ins["words"], ins["n_valid"], ins["unit"]
        shape = (rows, words * self.g.v)
        a = self.abuf[self._rows(pc, ins, "a")].reshape(shape).astype(np.int64)
        two = unit in ("add", "add_const") or (unit == "softmax" and ins.flag("mask"))
        b = self.abuf[self._rows(pc, ins, "b")].reshape(shape).astype(np.int64) if two else None
        if unit == "requant":
            out = self._requant(pc, ins, a)
            if ins.flag("gelu"):
                out = self._gelu(out)
        elif unit == "gelu":
            out = self._gelu(a)
        elif unit == "add":
            out = intops.add(a, b, ins["ma"], ins["mb"], ins["shift"], ins["out_bits"])
        elif unit == "add_const":
            out = intops.add_const(a, b, ins["out_bits"])
        elif unit == "layernorm":
            out = self._layernorm(pc, ins, a[:, :n])
        else:
            valid = None if b is None else b[:, :n] != 0
            if ins.flag("tulq"):
                problem = intops.tulq_problem(ins["knee"], ins["step_bits"], ins["grid_bits"], self.sm["exp_bits"])
                if problem:
                    raise MachineError(f"pc {pc} (vector softmax, tulq): fields {problem}")
                out = intops.softmax_tulq(a[:, :n], valid, ins["knee"], ins["step_bits"], ins["grid_bits"],
                                          self.sm["frac_bits"], self.sm["exp_bits"], sqrt2=ins.flag("sqrt2"))
            else:
                out = intops.softmax_log2(a[:, :n], valid, self.sm["code_bits"], self.sm["frac_bits"],
                                          self.sm["exp_bits"], sqrt2=ins.flag("sqrt2"))
        full = np.zeros(shape, np.int64)
        full[:, :n] = np.asarray(out)[:, :n]
        self.abuf[self._rows(pc, ins, "out")] = full.reshape(rows, words, self.g.v)

    def _layernorm(self, pc: int, ins: Instr, x: np.ndarray) -> np.ndarray:
        words, n = ins["words"], ins["n_valid"]
        if words > self.g.ln_entries:
            raise MachineError(f"pc {pc} (vector): field 'words': {words} past the LayerNorm table's "
                               f"{self.g.ln_entries} entries")
        t = self.tables["layernorm"][:words].reshape(-1, 3)[:n]
        return intops.layernorm(x, t[:, 0], t[:, 1], ins["shift"], ins["out_bits"], self.ln["frac_bits"],
                                self.ln["recip_bits"], in_shift=t[:, 2])


def _low_bits(x: np.ndarray, bits: int) -> np.ndarray:
    """The low ``bits`` of each element, sign-extended (what a ``bits``-wide signed port takes)."""
    f = np.asarray(x, dtype=np.int64) & ((1 << bits) - 1)
    return f - ((f >> (bits - 1)) << bits)


def _zero_past(x: np.ndarray, n_valid: int) -> np.ndarray:
    out = np.array(x, dtype=np.int64)
    out[:, n_valid:] = 0
    return out
