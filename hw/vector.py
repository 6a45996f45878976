"""The vector adder: ``sim.intops.add`` (residual adds) and ``sim.intops.add_const`` on ``lanes`` elements a cycle."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.common import check_int, replica, round_const
from sim import isa, widths
from sim.accel import SHIFT_BITS

#: register stages: the scaled operands, their rounded sum, its shift, the saturated result
STAGES = 4
assert STAGES == isa.ADD_LATENCY, "sim.isa.ADD_LATENCY is the adder's pipeline depth"


class VectorAdder(wiring.Component):
    """``y = saturate((a*ma + b*mb + 2**(shift-1)) >> shift, out_width)``, round half up, per lane.

    With ``const`` set the unit is ``add_const``: ``ma = mb = 1`` and ``shift = 0``, so
    ``y = saturate(a + b, out_width)``. ``ma``, ``mb``, ``shift``, ``out_width`` and ``const`` are
    held for the op from the cycle before its first beat (the multiplicands are registered); the output
    is signed, ``out_width`` wide, sign-extended onto ``o_y``. Fully pipelined: an input beat taken on
    ``i_valid`` appears on ``o_y`` with ``o_valid`` exactly :data:`STAGES` clock edges later. Shifts
    beyond the sum's width act as that width (the result is 0).
    """

    def __init__(self, lanes: int = 16, in_bits: int = widths.ADDER_IN_BITS, mult_bits: int = widths.REQUANT_M_BITS,
                 shift_bits: int = SHIFT_BITS, out_bits: int = widths.MAX_TENSOR_BITS):
        unit = "VectorAdder"
        self.lanes = check_int(unit, "lanes", lanes, 1, 64)
        self.in_bits = check_int(unit, "in_bits", in_bits, 2, 32)
        self.mult_bits = check_int(unit, "mult_bits", mult_bits, 1, 16)
        self.shift_bits = check_int(unit, "shift_bits", shift_bits, 1, 7)
        self.out_bits = check_int(unit, "out_bits", out_bits, 2, 32)
        self.latency = STAGES
        self.sum_bits = in_bits + mult_bits + 1  # a*ma + b*mb, both products of an unsigned multiplier
        super().__init__({
            "const": In(1),
            "ma": In(unsigned(mult_bits)),
            "mb": In(unsigned(mult_bits)),
            "shift": In(unsigned(shift_bits)),
            "out_width": In(range(2, out_bits + 1)),
            "i_valid": In(1),
            "i_a": In(data.ArrayLayout(signed(in_bits), lanes)),
            "i_b": In(data.ArrayLayout(signed(in_bits), lanes)),
            "o_valid": Out(1),
            "o_y": Out(data.ArrayLayout(signed(out_bits), lanes)),
        })

    @classmethod
    def from_accel(cls, cfg, **overrides) -> "VectorAdder":
        """The adder of accelerator ``cfg``: one lane per array column, the requantizer's multiplier width."""
        return cls(**{"lanes": cfg.array.cols, "mult_bits": cfg.requant.multiplier_bits, **overrides})

    @property
    def params(self) -> dict:
        return {"lanes": self.lanes, "in_bits": self.in_bits, "mult_bits": self.mult_bits,
                "shift_bits": self.shift_bits, "out_bits": self.out_bits}

    def elaborate(self, platform):
        m = Module()
        w = self.sum_bits
        ma = Mux(self.const, 1, self.ma)
        mb = Mux(self.const, 1, self.mb)
        shift = Mux(self.const, 0, self.shift)
        sc = Mux(shift > w, w, shift)
        top = Signal(unsigned(self.out_bits + 1))
        m.d.comb += top.eq(1 << (self.out_width - 1).as_unsigned())
        for lane in range(self.lanes):
            # the op's controls, registered once a lane: they are held for the op and first used a stage
            # after a beat enters, and a copy per lane keeps each one's fanout inside its lane (one shared
            # copy reached every lane's shifter, rounding and clamps, the joined design's most congested nets)
            lsc = replica(range(w + 1), f"sc_{lane}")
            rc = replica(unsigned(w), f"rc_{lane}")
            hi = replica(signed(self.out_bits + 1), f"hi_{lane}")
            lo = replica(signed(self.out_bits + 1), f"lo_{lane}")
            # the multiplicands too: the instruction's fields decoded into ma / mb no longer share a cycle with
            # the multiplier (they were the joined design's critical path), so they settle a cycle before a beat
            lma = replica(unsigned(self.mult_bits), f"ma_{lane}")
            lmb = replica(unsigned(self.mult_bits), f"mb_{lane}")
            m.d.sync += [lsc.eq(sc), rc.eq(round_const(sc, w)), hi.eq(top - 1), lo.eq(-top), lma.eq(ma), lmb.eq(mb)]
            pa = Signal(signed(self.in_bits + self.mult_bits + 1), name=f"pa_{lane}")
            pb = Signal(signed(self.in_bits + self.mult_bits + 1), name=f"pb_{lane}")
            m.d.sync += [pa.eq(self.i_a[lane] * lma), pb.eq(self.i_b[lane] * lmb)]
            total = Signal(signed(w + 1), name=f"sum_{lane}")
            shifted = Signal(signed(w + 1), name=f"shifted_{lane}")
            m.d.sync += [total.eq(pa + pb + rc), shifted.eq(total >> lsc)]
            m.d.sync += self.o_y[lane].eq(Mux(shifted > hi, hi, Mux(shifted < lo, lo, shifted)))
        valid = self.i_valid
        for stage in range(STAGES):
            reg = Signal(name=f"valid_s{stage + 1}")
            m.d.sync += reg.eq(valid)
            valid = reg
        m.d.comb += self.o_valid.eq(valid)
        return m
