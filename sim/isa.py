"""The accelerator's instruction set: what the compiler (``sim.compile``) emits, what the controller of
``hw.accelerator`` executes and what the cycle model counts.

The machine
-----------
One controller executes a stream of fixed-width instructions, one after the other: it fetches an
instruction from DRAM through the memory port, decodes it, runs it to completion (every unit it started
has written its last result) and fetches the next. Nothing overlaps across instructions; inside one, the
units it uses run as a pipeline.

Memories, all word-addressed (``V`` is the vector width: the array's rows, its columns and every vector
unit's lanes, which the joined accelerator requires to be equal):

* **DRAM**, behind the one memory port: *beats* of ``BEAT_BYTES = dram_bytes_per_cycle`` bytes, one beat
  read or written a cycle, a read's data the cycle after its address.
* **ABUF**, the activation buffer: words of ``V`` signed 32-bit elements (lane ``i`` in bits
  ``[32 i, 32 i + 32)``), ``activation_kib * 1024 / (4 V)`` words. Every activation, whatever its declared
  width, sits in it one element a lane, sign- or zero-extended to 32 bits (its declared signedness), in
  *row-major vector layout*: a tensor ``[..., rows, n]`` is ``ceil(n / V)`` words per row, lanes past
  ``n`` in the last word of a row hold 0. Biases and constant tensors (``add_const``, class tokens) are
  loaded into ABUF in the same layout. ABUF has two read ports (``a``: every stream; ``b``: the second
  operand of ``add`` / ``add_const`` and the softmax key mask, read in the same cycle as ``a``) and one
  write port.
* **WBUF**, the weight buffer: words of ``V`` weights of ``weight_bits`` each (one beat of the array's
  weight port), ``weight_kib * 1024 * 8 / (V * weight_bits)`` words.
* The unit tables: the requantizer's ``(M, shift, zero point)`` table (``REQUANT_CHANNELS`` entries),
  the GELU table (``2**in_bits`` entries, entry ``x + 2**(in_bits-1)`` for input ``x``) and the LayerNorm
  ``(gamma, beta, in_shift)`` table (one entry a word of ``V`` channels; a ``layernorm`` instruction
  reads entries 0 to ``words - 1``, so its table is loaded at entry 0).

In DRAM every item is beat-aligned: an ABUF word takes ``4 V / BEAT_BYTES`` beats, a WBUF word
``ceil(V * weight_bits / 8 / BEAT_BYTES)``, a table entry ``ceil(entry_bits / (8 BEAT_BYTES))`` beats
(:func:`entry_beats`); the bits of an item are little-endian across its beats.

Instructions
------------
An instruction is ``INSTR_SLOTS`` 16-bit slots (``INSTR_BITS`` bits, ``INSTR_BITS / 8 / BEAT_BYTES``
beats in DRAM). Slot 0 is the opcode (bits 0-7) and flags (bits 8-15); the op's fields fill the next
slots in the order :data:`FORMATS` lists them, a field named in :data:`WIDE` taking two slots (low half
first). Unused slots are 0. All fields are unsigned unless :data:`SIGNED_FIELDS` names them (two's
complement in their slots).

Counts (``count``, ``m``, ``kf``, ``nf``, ``digits``, ``w_digits``, ``rows``, ``words``) are at least 1.
An ABUF element an array port reads is taken by its low bits: ``weight_bits`` of a stationary element
(matmul, log2), ``act_bits`` of each digit of a streamed one.

``load``    DRAM -> ABUF / WBUF / a unit table. ``target``: one of :data:`TARGETS`; ``count`` items from
            beat ``dram`` on into ``addr`` onward (items: words for the buffers, entries for the tables).
``store``   ABUF -> DRAM: ``count`` words from ``addr`` to beat ``dram`` on.
``gemm``    the MAC array, with the requantizer and GELU unit as its drain pipeline (the *epilogue*).
            Folds in the order ``for j < nf: for i < kf: for e < w_digits: for d < digits``; fold
            ``(j, i, e, d)`` loads a ``V x V`` stationary tile, streams ``m`` rows, ``x`` row ``t`` being ABUF
            word ``x_base + t * x_stride + i``, digit ``d`` of each element (see *digits*). The stationary tile:

            * mode ``linear``: beat ``r`` is WBUF word ``s_base + ((j * kf + i) * w_digits + e) * V + r`` (the
              compiler lays weight digit ``e`` of ``W[j V + c, i V + r]`` there, see *digits*);
            * mode ``matmul`` (``a @ b.T``, b stationary): beat ``r`` lane ``c`` is element ``r`` of ABUF word
              ``s_base + (j V + c) * s_stride + i``, 0 where ``j V + c >= s_valid``; the controller reads the
              ``V`` words into a transpose buffer, the first fold's before it, every later one's during the
              drain of the fold before;
            * mode ``log2`` (codes ``@`` V): beat ``r`` is ABUF word ``s_base + (i V + r) * s_stride + j``,
              0 where ``i V + r >= s_valid``; the streamed rows are log2 codes, flag ``sqrt2`` their base
              (``digits`` 1, ``unsigned_digits`` 0);
            * mode ``matmul_kn`` (``a @ b``, b stationary as it lies, e.g. truncated uniform-log2 levels ``@`` V):
              the stationary beats of mode ``log2``, the streamed rows integers in balanced signed digits as in
              mode ``matmul``, the array multiplying as in ``linear`` / ``matmul``;

            in modes matmul, log2 and matmul_kn digit ``e`` of each stationary element (see *digits*).

            The accumulator starts from the ABUF word ``bias + j`` on fold ``(j, 0, 0, 0)`` (flag ``bias``;
            else 0; linear and matmul only: log2 folds read their stationary beats through the port the bias
            takes) and adds every later fold's partial sums shifted left by ``(d + e) * act_bits`` (a weight
            digit is ``weight_bits`` wide, which must equal ``act_bits`` for ``w_digits`` > 1). On the last fold of
            column block ``j`` each of the ``m`` rows drains, as the exact sum saturated to int32 (what the
            requantizer reads too: the engine's array op, then its requant): flag ``requant``: requantized with table
            entry ``ch_base + j V + c`` for lane ``c`` (flag ``per_tensor``: entry ``ch_base`` for all),
            ``out_bits`` wide, flag ``signed``; flag ``gelu`` (with ``requant``): then through the GELU table; otherwise the
            saturated int32 accumulator. Lanes with ``j V + c >= n_valid`` are written 0. Row ``t`` goes to
            ABUF word ``out_base + t * out_stride + j``.
``vector``  an element-wise pass of one vector unit over ``rows`` rows of ``words`` words: source
            ``a_base + row * a_stride + w`` (and ``b_base + row * b_stride + w``), result to
            ``out_base + row * out_stride + w``; elements past ``n_valid`` of a row are written 0.
            ``unit``: one of :data:`VECTOR_UNITS`:

            * ``requant`` (the unit; flag ``requant`` is not needed): ``sim.intops.requantize`` of a, entry ``ch_base + w V + c`` (flag
              ``per_tensor``: ``ch_base``), ``out_bits``, flag ``signed``; flag ``gelu``: then the GELU table;
            * ``gelu``: the GELU table of a;
            * ``add``: ``sim.intops.add(a, b, ma, mb, shift, out_bits)`` (b through read port ``b``);
            * ``add_const``: ``sim.intops.add_const(a, b, out_bits)``;
            * ``layernorm``: ``sim.intops.layernorm`` of each row (``n_valid`` channels), gamma / beta /
              in_shift from table word ``w``, ``shift``, ``out_bits``;
            * ``softmax``: ``sim.intops.softmax_log2`` of each row (``n_valid`` elements, the lanes past it
              masked), flag ``sqrt2``; flag ``mask``: also masked where the key-mask word
              ``b_base + row * b_stride + w`` holds 0 (one element a key, 0 or 1). Flag ``tulq``: instead
              ``sim.intops.softmax_tulq`` of each row with ``knee``, ``step_bits``, ``grid_bits`` and flag
              ``sqrt2`` (levels, not codes; the row takes ``sim.timing.TULQ_EXTRA_STAGES`` cycles more).
``end``     stop; the accelerator raises ``done``. An unknown opcode stops it the same way.

The top level (``hw.accelerator.Accelerator``): ``start`` (a one-cycle pulse, taken while idle or done:
fetch from DRAM beat 0), ``done`` (high from the cycle after ``end`` retires until the next ``start``),
the memory port ``mem_addr`` (beat address), ``mem_re``, ``mem_we``, ``mem_wdata`` (one beat),
``mem_rdata`` (the beat read, valid the cycle after ``mem_re``), and for benches ``cycles`` (clock edges
since ``start``, the edge that takes ``start`` counted), ``retire`` (high on each instruction's last
cycle) and ``pc`` (the index of the instruction retiring). Instruction ``k`` retires with ``cycles``
equal to the sum of :func:`instr_cycles` over instructions ``0..k``; the ``end``'s is the run's total. The memory image (``sim.compile``) is the instruction stream from beat 0 on, then
the parameters, the inputs and room for every tensor that goes to DRAM.

An instruction's result words do not overlap the ABUF words it reads: the Python machine reads every operand
before it writes, while the RTL streams reads and writes side by side, and its buffers leave a read of the
word written in the same cycle undefined (``hw.common.SlicedMemory``). The compiler never breaks this rule
(a tensor's region is allocated before the op that writes it and freed after its last reader).

Digits: an operand wider than the array's ``act_bits`` port streams as ``digits`` folds, digit ``d`` being
bits ``[d act_bits, (d + 1) act_bits)``. A digit whose bit ``d`` of ``unsigned_digits`` is set is
unsigned: the controller feeds it with its top bit inverted (the digit minus ``2**(act_bits-1)``, a
signed value the port takes) and the compiler has added ``2**(act_bits-1) * 2**(d act_bits) * sum_k
W[n, k]`` to the bias (linear only). ``digits`` is at most :func:`max_digits` (operands up to
``sim.widths.MAX_ACT_BITS``).

In modes ``matmul`` and ``matmul_kn`` both operands are data, so neither takes unsigned digits (their offset
would multiply the other operand): the streamed one enters as balanced signed digits, digit ``d`` being bits
``[d act_bits, (d + 1) act_bits)`` of ``x + C`` with its top bit inverted, ``C = sum_{e < digits}
2**(act_bits-1) * 2**(e act_bits)`` (``sim.intops.balanced_digit``; ``unsigned_digits`` 0), and in modes
``matmul``, ``log2`` and ``matmul_kn`` the stationary element read from ABUF enters as digit ``e`` of its ``w_digits``
balanced digits the same way (one digit: its low ``weight_bits``, sign-extended).

Weights wider than the array's ``weight_bits`` port are laid in WBUF as ``w_digits`` planes of signed
digits (``sim.intops.weight_digit_planes``: balanced, so no digit is unsigned and no correction is
needed), at most :func:`max_weight_digits` (weights up to ``sim.widths.MAX_WEIGHT_BITS``); the array's
partial-sum shift covers ``digits + w_digits - 1`` steps (:func:`array_digits`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sim import widths
from sim.timing import ceil_div, operand_digits

INSTR_SLOTS = 20
SLOT_BITS = 16
INSTR_BITS = INSTR_SLOTS * SLOT_BITS

OPCODES = {"load": 1, "store": 2, "gemm": 3, "vector": 4, "end": 15}
TARGETS = ("abuf", "wbuf", "requant", "gelu", "layernorm")
GEMM_MODES = ("linear", "matmul", "log2", "matmul_kn")
VECTOR_UNITS = ("requant", "gelu", "add", "add_const", "layernorm", "softmax")

#: flag name -> bit of slot 0's high byte
FLAGS = {"bias": 0, "requant": 1, "gelu": 2, "per_tensor": 3, "signed": 4, "sqrt2": 5, "mask": 6, "tulq": 7}

#: each op's fields in slot order (slot 1 on)
FORMATS = {
    "load": ("target", "addr", "count", "dram"),
    "store": ("addr", "count", "dram"),
    "gemm": ("mode", "m", "kf", "nf", "digits", "unsigned_digits", "x_base", "x_stride", "s_base", "s_stride",
             "s_valid", "bias_base", "out_base", "out_stride", "n_valid", "out_bits", "ch_base", "w_digits"),
    "vector": ("unit", "rows", "words", "a_base", "a_stride", "b_base", "b_stride", "out_base", "out_stride",
               "n_valid", "out_bits", "ch_base", "ma", "mb", "shift", "knee", "step_bits", "grid_bits"),
    "end": (),
}
WIDE = frozenset({"dram"})
SIGNED_FIELDS: frozenset = frozenset()  # none yet; ma and mb are unsigned 16-bit like the requantizer multipliers
ENUMS = {"target": TARGETS, "mode": GEMM_MODES, "unit": VECTOR_UNITS}


class IsaError(ValueError):
    """An instruction that cannot be encoded: a field out of its slot's range, or an unknown op or flag."""


@dataclass(frozen=True)
class Instr:
    """One instruction: ``op``, its fields (names of ``FORMATS[op]``; enums by name) and its set flags.

    ``note`` (not encoded) names the program op it was compiled from, for diagnostics and per-op cycles."""

    op: str
    fields: dict = field(default_factory=dict)
    flags: frozenset = frozenset()
    note: str = ""

    def __getitem__(self, name: str):
        return self.fields.get(name, 0)

    def flag(self, name: str) -> bool:
        return name in self.flags


def _slots(op: str) -> list[tuple[str, int]]:
    """(field, slot) of each of ``op``'s fields."""
    out, slot = [], 1
    for name in FORMATS[op]:
        out.append((name, slot))
        slot += 2 if name in WIDE else 1
    if slot > INSTR_SLOTS:
        raise AssertionError(f"{op}: {slot - 1} slots")
    return out


def encode(instr: Instr) -> int:
    """The instruction as an ``INSTR_BITS``-bit integer (slot 0 in the low bits)."""
    if instr.op not in OPCODES:
        raise IsaError(f"unknown op {instr.op!r}")
    unknown = set(instr.fields) - set(FORMATS[instr.op])
    if unknown:
        raise IsaError(f"{instr.op}: unknown field {sorted(unknown)[0]!r}")
    bad = set(instr.flags) - set(FLAGS)
    if bad:
        raise IsaError(f"{instr.op}: unknown flag {sorted(bad)[0]!r}")
    word = OPCODES[instr.op] | sum(1 << (8 + FLAGS[f]) for f in instr.flags)
    for name, slot in _slots(instr.op):
        v = instr.fields.get(name, 0)
        if name in ENUMS:
            v = ENUMS[name].index(v) if isinstance(v, str) else v
        bits = SLOT_BITS * (2 if name in WIDE else 1)
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if name in SIGNED_FIELDS else (0, (1 << bits) - 1)
        if not isinstance(v, int) or not lo <= v <= hi:
            raise IsaError(f"{instr.op} ({instr.note or 'no op'}): field {name!r} = {v!r} outside [{lo}, {hi}]")
        word |= (v & ((1 << bits) - 1)) << (slot * SLOT_BITS)
    return word


def decode(word: int) -> Instr:
    """The inverse of :func:`encode` (enums as names)."""
    code = word & 0xFF
    ops = {v: k for k, v in OPCODES.items()}
    if code not in ops:
        raise IsaError(f"unknown opcode {code}")
    op = ops[code]
    flags = frozenset(f for f, b in FLAGS.items() if word >> (8 + b) & 1)
    fields = {}
    for name, slot in _slots(op):
        bits = SLOT_BITS * (2 if name in WIDE else 1)
        v = word >> (slot * SLOT_BITS) & ((1 << bits) - 1)
        if name in SIGNED_FIELDS and v >> (bits - 1):
            v -= 1 << bits
        if name in ENUMS:
            v = ENUMS[name][v]
        fields[name] = v
    return Instr(op, fields, flags)


def instr_beats(beat_bytes: int) -> int:
    """DRAM beats of one instruction."""
    return ceil_div(INSTR_BITS, 8 * beat_bytes)


# ------------------------------------------------------------------ sizes in DRAM beats
def requant_entry_bits(mult_bits: int, shift_bits: int, out_bits: int) -> int:
    """A requantizer table entry: ``M`` (bits 0 on), ``shift``, then the zero point (``out_bits + 1``, signed)."""
    return mult_bits + shift_bits + out_bits + 1


def layernorm_entry_bits(lanes: int, gamma_bits: int, beta_bits: int) -> int:
    """A LayerNorm table entry: per lane ``gamma``, ``beta``, ``in_shift`` (2 bits), lane 0 in the low bits:
    lane ``i`` at bit ``i * (gamma_bits + beta_bits + 2)``, gamma first, then beta, then in_shift."""
    return lanes * (gamma_bits + beta_bits + 2)


def beats(bits: int, beat_bytes: int) -> int:
    """DRAM beats of one item of ``bits`` bits (items are beat-aligned)."""
    return ceil_div(bits, 8 * beat_bytes)


def load_item_bits(target: str, accel) -> int:
    """Bits of one item a ``load`` to ``target`` writes: an ABUF or WBUF word, a table entry."""
    from sim.accel import layernorm_params, requant_params

    v = accel.array.rows
    if target == "abuf":
        return 32 * v
    if target == "wbuf":
        return v * accel.array.weight_bits
    if target == "requant":
        p = requant_params(accel)
        return requant_entry_bits(p["mult_bits"], p["shift_bits"], p["out_bits"])
    if target == "gelu":
        return accel.gelu.out_bits
    if target == "layernorm":
        p = layernorm_params(accel)
        return layernorm_entry_bits(p["lanes"], p["gamma_bits"], p["beta_bits"])
    raise IsaError(f"load: unknown target {target!r} (accepted: {', '.join(TARGETS)})")


def max_digits(accel) -> int:
    """The most digits a gemm operand may stream: ``ceil(MAX_ACT_BITS / act_bits)``."""
    return operand_digits(widths.MAX_ACT_BITS, accel.array.act_bits)


def max_weight_digits(accel) -> int:
    """The most weight digits a linear may take: those of the widest weight range, ``MAX_WEIGHT_BITS``."""
    from sim.intops import signed_digits

    return signed_digits(widths.MAX_WEIGHT_BITS, accel.array.weight_bits)


def array_digits(accel) -> int:
    """The partial-sum shifts the array's digit port covers: an activation digit plus a weight digit."""
    return max_digits(accel) + max_weight_digits(accel) - 1


# ------------------------------------------------------------------ cycles
# The controller's cycle contract, written once: hw.accelerator takes exactly this many clock edges per
# instruction (rtl_tests/test_accelerator.py measures each), and sim.compile sums it into the schedule's cycles.
FETCH_EXTRA = 1  #: the cycle the fetch's last beat returns (and the opcode dispatches)
ADD_LATENCY = 4  #: the vector adder (hw.vector.STAGES): scale both operands, round, shift, saturate


def fetch_cycles(beat_bytes: int) -> int:
    """Fetching and decoding one instruction: one read a beat, then the cycle the last beat returns."""
    return instr_beats(beat_bytes) + FETCH_EXTRA


def gemm_folds(instr: Instr) -> int:
    """A gemm's folds: every column block, reduction block, weight digit and activation digit."""
    return instr["nf"] * instr["kf"] * instr["w_digits"] * instr["digits"]


def _gemm_cycles(instr: Instr, accel) -> int:
    """A first cycle (the first stationary read; in matmul mode then ``V + 1`` cycles that read the first
    tile into the transpose buffer, the later tiles being read during the drain before them), then per
    fold the array's ``V`` weight beats, ``m`` streamed rows and ``2 V - 1`` drain cycles and the column
    bottom's stages (``sim.timing.mac_fold_cycles``); then the cycle the last row leaves the array and the epilogue's
    latency (requantizer, GELU) to the last ABUF write."""
    from sim import timing

    first_tile = accel.array.rows + 1 if instr["mode"] == "matmul" else 0
    folds = gemm_folds(instr)
    fold = timing.mac_fold_cycles(instr["m"], accel.array.rows, accel.array.cols)
    tail = 1 + (accel.requant.latency if instr.flag("requant") else 0) + \
        (accel.gelu.latency if instr.flag("gelu") else 0)
    return 1 + first_tile + folds * fold + tail


#: a vector instruction's cycles before its unit sees the first word: the first read, and its data registered
#: into the feed's queue (``hw.accelerator.QUEUE``)
VECTOR_FEED_CYCLES = 2


def _vector_cycles(instr: Instr, accel) -> int:
    """The feed's :data:`VECTOR_FEED_CYCLES`, one word a cycle into the unit, its latency to the last
    write. Softmax and LayerNorm take row after row back to back (``sim.timing.*_row_cycles``); the
    feed's cycles and the cycle their last result is written add ``VECTOR_FEED_CYCLES + 1``."""
    from sim import timing

    unit, n = instr["unit"], instr["rows"] * instr["words"]
    feed = VECTOR_FEED_CYCLES
    if unit == "requant":
        return feed + n + accel.requant.latency + (accel.gelu.latency if instr.flag("gelu") else 0)
    if unit == "gelu":
        return feed + n + accel.gelu.latency
    if unit in ("add", "add_const"):
        return feed + n + ADD_LATENCY
    if unit == "layernorm":
        return instr["rows"] * timing.layernorm_row_cycles(instr["n_valid"], accel.layernorm.lanes,
                                                           accel.layernorm.latency) + feed + 1
    return instr["rows"] * timing.softmax_row_cycles(instr["n_valid"], accel.softmax.lanes,
                                                     accel.softmax.latency, instr.flag("tulq")) + feed + 1


def exec_cycles(instr: Instr, accel) -> int:
    """Clock edges from the first cycle after the fetch to the one that writes the instruction's last
    result (its retire cycle), in closed form:

    * ``end``: 0 (it retires on the fetch's last cycle);
    * ``load``: one DRAM read a cycle, ``count * beats(item)``, and the cycle the last beat returns;
    * ``store``: the first ABUF read, then one DRAM write a cycle, ``count * 4 V / BEAT_BYTES``;
    * ``gemm``: :func:`_gemm_cycles`; ``vector``: :func:`_vector_cycles`.
    """
    bb = int(accel.dram_bytes_per_cycle)
    if instr.op == "end":
        return 0
    if instr.op == "load":
        return instr["count"] * beats(load_item_bits(instr["target"], accel), bb) + 1
    if instr.op == "store":
        return instr["count"] * beats(32 * accel.array.rows, bb) + 1
    if instr.op == "gemm":
        return _gemm_cycles(instr, accel)
    return _vector_cycles(instr, accel)


def instr_cycles(instr: Instr, accel) -> int:
    """One instruction, fetch included: the cycles between its predecessor's retire and its own."""
    return fetch_cycles(int(accel.dram_bytes_per_cycle)) + exec_cycles(instr, accel)
