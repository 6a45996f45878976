"""Small pieces every unit uses: parameter checks, saturation, round-half-up constants, delay lines,
pipelined reduction trees, memories of block-RAM-wide slices, replicated registers."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, Value, unsigned
from amaranth.lib.memory import Memory


#: the attribute of a register that is one of several copies of the same value, each placed for its own
#: loads: ``hw.synth`` marks the flip-flops driving it ``keep``, so that yosys' ``opt_merge`` leaves the
#: copies apart (it merges flip-flops with the same inputs, which undoes a replication for fanout)
REPLICA = "ptq2rtl_replica"


def replica(shape, name: str) -> Signal:
    """A register meant as one copy of a value among several (:data:`REPLICA`); it needs no reset, since each
    copy is loaded every cycle from the value it copies."""
    return Signal(shape, name=name, reset_less=True, attrs={REPLICA: 1})


class ParameterError(ValueError):
    """A unit was given a parameter outside the range it can build."""


def check_int(unit: str, name: str, value, lo: int, hi: int | None = None) -> int:
    """``value`` must be an int in [lo, hi] (hi None: no upper bound); the error names the unit, parameter and range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(f"{unit}: parameter {name!r} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        accepted = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ParameterError(f"{unit}: parameter {name!r} = {value} is outside the accepted range {accepted}")
    return value


def check_bool(unit: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ParameterError(f"{unit}: parameter {name!r} must be True or False, got {value!r}")
    return value


def int_bounds(bits: int, is_signed: bool = True) -> tuple[int, int]:
    if is_signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def saturate(value, bits: int, is_signed: bool = True):
    """Clamp an Amaranth value to ``bits`` wide; the result is ``bits`` wide. A signed value is tested with
    :func:`fits_signed` and replaced by the rail its sign names: the same bits as two comparisons, in far
    fewer LUTs once ABC has mapped them (a 34-to-32-bit lane: ~260 LUT4 less)."""
    if is_signed:
        value = value.as_signed()
        if len(value) <= bits:
            return value
        sign = value[-1]
        rail = Cat(*([~sign] * (bits - 1)), sign)  # 2**(bits-1) - 1 above, -2**(bits-1) below
        return Mux(fits_signed(value, bits), value[:bits], rail).as_signed()
    lo, hi = int_bounds(bits, is_signed)
    return Mux(value > hi, Const(hi, unsigned(bits)), Mux(value < lo, Const(lo, unsigned(bits)), value[:bits]))


def fits_signed(value, bits: int):
    """Whether signed ``value`` lies in the ``bits``-bit two's complement range (its bits from ``bits - 1``
    up are all equal): a reduction, no comparator."""
    top = value[bits - 1:]
    return top.all() | ~top.any()


def round_const(shift, width: int):
    """``2**(shift-1)`` for ``1 <= shift <= width``, 0 for ``shift == 0``: a decoder, no shifter."""
    return Cat(*[shift == k + 1 for k in range(width)])


def signed_width(lo: int, hi: int) -> int:
    """Bits of the narrowest two's complement type holding [lo, hi]."""
    bits = 1
    while not (-(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1):
        bits += 1
    return bits


def delay(m: Module, value, cycles: int, name: str):
    """``value`` delayed by ``cycles`` registers (``cycles == 0``: the value itself)."""
    for i in range(cycles):
        reg = Signal(value.shape(), name=f"{name}_d{i}")
        m.d.sync += reg.eq(value)
        value = reg
    return value


def lane_tables(m: Module, name: str, shape, depth: int, lanes: int, write: dict):
    """One copy of a loadable table per lane, each with one synchronous read port; the copies share
    the write (``write``: ``en``, ``addr``, ``data`` values). The same as one memory with ``lanes`` read
    ports, in a form every BRAM mapper takes (Yosys' memory_libmap gives up on many read ports)."""
    from amaranth.lib.memory import Memory

    ports = []
    for lane in range(lanes):
        mem = Memory(shape=shape, depth=depth, init=[])
        m.submodules[f"{name}_{lane}"] = mem
        wr = mem.write_port()
        m.d.comb += [wr.en.eq(write["en"]), wr.addr.eq(write["addr"]), wr.data.eq(write["data"])]
        ports.append(mem.read_port())
    return ports


def tree(m: Module, operands: list, stages: int, name: str, op=None, arity: int = 2):
    """``op`` (default: the sum) over ``operands`` as a tree of ``arity``-operand nodes whose levels are
    split evenly over ``stages`` register stages (each stage's values are registered): the result comes
    ``stages`` cycles after its operands."""
    op = op or (lambda vs: sum(vs[1:], vs[0]))
    levels, n = 0, len(operands)
    while n > 1:
        levels, n = levels + 1, -(-n // arity)
    per_stage = -(-levels // stages)
    level = list(operands)
    for stage in range(stages):
        for _ in range(per_stage):
            level = [op(level[i:i + arity]) if len(level[i:i + arity]) > 1 else level[i]
                     for i in range(0, len(level), arity)]
        regs = []
        for i, value in enumerate(level):
            reg = Signal(Value.cast(value).shape(), name=f"{name}_{stage}_{i}")
            m.d.sync += reg.eq(value)
            regs.append(reg)
        level = regs
    return level[0]


#: an ECP5 block RAM's (DP16KD) shapes, (depth, data bits), shallowest first
EBR_SHAPES = ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))


def slice_bits(depth: int) -> int:
    """The width of a block RAM ``depth`` deep (:data:`EBR_SHAPES`; 1 past the deepest)."""
    return next((bits for d, bits in EBR_SHAPES if depth <= d), 1)


class SlicedMemory:
    """A synchronous memory of ``shape`` built from slices as deep as the memory and as wide as one block
    RAM of that depth (:func:`slice_bits`), side by side, so that a word is read without a select between
    banks (a 2,048-deep buffer of 256-bit words: 29 block RAMs of 2048 x 9, where one 256-bit memory maps to
    four banks of 512 x 36 and a 4:1 select after every read). Read data comes the cycle after the
    address: ``read[i].addr`` / ``.data``, ``write.addr`` / ``.data`` / ``.en``.

    A read of the word being written in the same cycle is left undefined (the slices carry yosys'
    ``no_rw_check``): the simulators return the old word, a block RAM's two ports do not promise it, and
    without the attribute yosys emulates it with an address compare and a select after the read data
    (in the joined ecp5-85f accelerator 529 flip-flops and 265 LUT4 more, on the read paths). The users
    of a sliced memory never read a word in the cycle they write it."""

    def __init__(self, m: Module, name: str, shape, depth: int, reads: int):
        width = Shape.cast(shape).width
        bits = slice_bits(depth)
        self.write = _Port(shape, depth, name=f"{name}_w", en=True)
        self.read = [_Port(shape, depth, name=f"{name}_r{i}") for i in range(reads)]
        self.slices = []
        wdata = Value.cast(self.write.data)
        for k, lo in enumerate(range(0, width, bits)):
            hi = min(lo + bits, width)
            mem = Memory(shape=unsigned(hi - lo), depth=depth, init=[], attrs={"no_rw_check": 1})
            m.submodules[f"{name}_{k}"] = mem
            self.slices.append(mem)
            wp = mem.write_port()
            m.d.comb += [wp.en.eq(self.write.en), wp.addr.eq(self.write.addr), wp.data.eq(wdata[lo:hi])]
            for port in self.read:
                rp = mem.read_port()
                m.d.comb += [rp.addr.eq(port.addr), Value.cast(port.data)[lo:hi].eq(rp.data)]


class _Port:
    def __init__(self, shape, depth: int, name: str, en: bool = False):
        self.addr = Signal(range(depth), name=f"{name}_addr")
        self.data = Signal(shape, name=f"{name}_data")
        if en:
            self.en = Signal(name=f"{name}_en")
