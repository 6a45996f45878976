"""The requantizer: ``sim.intops.requantize`` as a pipelined unit, ``lanes`` elements per cycle."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.common import check_bool, check_int, delay, lane_tables, round_const
from sim import timing, widths
from sim.accel import requant_params


class Requantizer(wiring.Component):
    """``y = saturate(((x*M[c] + 2**(s[c]-1)) >> s[c]) + z[c], out_width, out_signed)``, round half up.

    ``(M, s, z)`` is a per-channel table of ``channels`` entries, loaded through
    the ``tbl_*`` port; each lane names the channel of its element on ``i_ch``.
    With ``pow2=True`` every M is a power of two and there is no multiplier:
    the table keeps ``log2(M)`` (taken from the loaded M's leading one) and
    the unit is a left shifter followed by a rounding right shifter. The output width (up to ``out_bits``) and signedness are
    set per op on ``out_width`` / ``out_signed``; ``o_y`` carries the result's
    bits, sign- or zero-extended to ``out_bits``. Fully pipelined: an input
    beat taken on ``i_valid`` appears on ``o_y`` with ``o_valid`` exactly
    ``latency`` clock edges later (``sim.timing.stream_cycles``). Shift amounts
    beyond the product width give the same result as the product width, so
    the shifter only spans the product.
    """

    def __init__(self, in_bits: int = widths.ACC_BITS, out_bits: int = 8, mult_bits: int = widths.REQUANT_M_BITS, shift_bits: int = 6,
                 lanes: int = 1, channels: int = 64, pow2: bool = False, latency: int | None = None):
        unit = "Requantizer"
        self.in_bits = check_int(unit, "in_bits", in_bits, 2, 48)
        self.out_bits = check_int(unit, "out_bits", out_bits, 2, 32)
        self.mult_bits = check_int(unit, "mult_bits", mult_bits, 1, 32)
        self.shift_bits = check_int(unit, "shift_bits", shift_bits, 1, 7)
        self.lanes = check_int(unit, "lanes", lanes, 1, 64)
        self.channels = check_int(unit, "channels", channels, 1, 1 << 16)
        self.pow2 = check_bool(unit, "pow2", pow2)
        # table read, product (or left shift), round and shift, zero point and saturation
        self.min_latency, most = timing.LATENCY_RANGE["requant"]
        self.latency = check_int(unit, "latency", self.min_latency if latency is None else latency,
                                 self.min_latency, most)
        self.prod_bits = in_bits + mult_bits  # x * M, or x << log2(M) with M < 2**mult_bits
        ch_shape = unsigned(max(1, (channels - 1).bit_length()))
        members = {
            "tbl_we": In(1),
            "tbl_addr": In(ch_shape),
            "tbl_m": In(unsigned(mult_bits)),
            "tbl_shift": In(unsigned(shift_bits)),
            "tbl_zp": In(signed(out_bits + 1)),  # unsigned outputs reach 2**out_bits - 1
            "out_width": In(range(2, out_bits + 1)),
            "out_signed": In(1),
            "i_valid": In(1),
            "i_x": In(data.ArrayLayout(signed(in_bits), lanes)),
            "i_ch": In(data.ArrayLayout(ch_shape, lanes)),
            "o_valid": Out(1),
            "o_y": Out(data.ArrayLayout(unsigned(out_bits), lanes)),
        }
        super().__init__(members)

    @classmethod
    def from_accel(cls, cfg, **overrides) -> "Requantizer":
        """The requantizer of accelerator ``cfg`` (``sim.accel.requant_params``: it reads the array's
        accumulators, writes up to the residual stream's width, holds ``REQUANT_CHANNELS`` channels), the
        limits ``sim.accel.check_program`` holds programs to."""
        return cls(**{**requant_params(cfg), **overrides})

    @property
    def params(self) -> dict:
        return {"in_bits": self.in_bits, "out_bits": self.out_bits, "mult_bits": self.mult_bits,
                "shift_bits": self.shift_bits, "lanes": self.lanes, "channels": self.channels,
                "pow2": self.pow2, "latency": self.latency}

    def elaborate(self, platform):
        m = Module()
        fields = {"shift": unsigned(self.shift_bits), "zp": signed(self.out_bits + 1)}
        if self.pow2:
            fields["log2_m"] = range(self.mult_bits)
        else:
            fields["m"] = unsigned(self.mult_bits)
        entry = data.StructLayout(fields)
        row = Signal(entry)
        m.d.comb += [row.shift.eq(self.tbl_shift), row.zp.eq(self.tbl_zp)]
        if self.pow2:  # the loaded M's leading one, found once at load time
            for bit in range(self.mult_bits):
                with m.If(self.tbl_m[bit]):
                    m.d.comb += row.log2_m.eq(bit)
        else:
            m.d.comb += row.m.eq(self.tbl_m)
        reads = lane_tables(m, "table", entry, self.channels, self.lanes,
                            {"en": self.tbl_we, "addr": self.tbl_addr, "data": row})

        w = self.prod_bits
        # the op's output range, from its width and signedness (held for the op)
        lo = Signal(signed(self.out_bits + 1))
        hi = Signal(signed(self.out_bits + 1))
        top = Signal(unsigned(self.out_bits + 1))
        m.d.comb += top.eq(1 << (self.out_width - self.out_signed).as_unsigned())
        m.d.comb += [hi.eq(top - 1), lo.eq(Mux(self.out_signed, -top, 0))]
        valid = [self.i_valid]
        for stage in range(self.min_latency):
            v = Signal(name=f"valid_s{stage + 1}")
            m.d.sync += v.eq(valid[-1])
            valid.append(v)
        for lane in range(self.lanes):
            rd = reads[lane]  # stage 1: table entry and x arrive together
            m.d.comb += rd.addr.eq(self.i_ch[lane])
            x1 = Signal(signed(self.in_bits), name=f"x1_{lane}")
            m.d.sync += x1.eq(self.i_x[lane])
            # stage 2: x * M, or x << log2(M) without a multiplier
            prod = Signal(signed(w), name=f"prod_{lane}")
            s2 = Signal(unsigned(self.shift_bits), name=f"s2_{lane}")
            z2 = Signal(signed(self.out_bits + 1), name=f"z2_{lane}")
            scaled = (x1 << rd.data.log2_m) if self.pow2 else x1 * rd.data.m
            m.d.sync += [prod.eq(scaled), s2.eq(rd.data.shift), z2.eq(rd.data.zp)]
            # next stage: round half up and shift; shifts beyond w act as w
            sc = Signal(range(w + 1), name=f"sc_{lane}")
            m.d.comb += sc.eq(Mux(s2 > w, w, s2))
            shifted = Signal(signed(w + 1), name=f"shifted_{lane}")
            z3 = Signal(signed(self.out_bits + 1), name=f"z3_{lane}")
            m.d.sync += [shifted.eq((prod + round_const(sc, w)) >> sc), z3.eq(z2)]
            # last stage: zero point and saturation to the op's range
            y = Signal(unsigned(self.out_bits), name=f"y_{lane}")
            biased = shifted + z3
            m.d.sync += y.eq(Mux(biased > hi, hi, Mux(biased < lo, lo, biased)))
            m.d.comb += self.o_y[lane].eq(delay(m, y, self.latency - self.min_latency, f"y_{lane}"))
        m.d.comb += self.o_valid.eq(delay(m, valid[-1], self.latency - self.min_latency, "valid"))
        return m
