"""The requantizer: ``sim.intops.requantize`` as a pipelined unit, ``lanes`` elements per cycle."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.common import check_bool, check_int, delay, fits_signed, lane_tables, replica
from sim import timing, widths
from sim.accel import requant_params

FINE_BITS = 3  #: the last stage shifts by ``s mod 2**FINE_BITS``, the one before by the rest of ``s``


class Requantizer(wiring.Component):
    """``y = saturate(((x*M[c] + 2**(s[c]-1)) >> s[c]) + z[c], out_width, out_signed)``, round half up.

    ``(M, s, z)`` is a per-channel table of ``channels`` entries, loaded through
    the ``tbl_*`` port; each lane names the channel of its element on ``i_ch``.
    With ``pow2=True`` every M is a power of two and there is no multiplier:
    the table keeps ``log2(M)`` (taken from the loaded M's leading one) and
    the product is a left shift. The output width (up to ``out_bits``) and
    signedness are set per op on ``out_width`` / ``out_signed`` and taken with
    each beat; ``o_y`` carries the result's bits, sign- or zero-extended to
    ``out_bits``. Fully pipelined: an input beat taken on ``i_valid`` appears on
    ``o_y`` with ``o_valid`` exactly ``latency`` clock edges later
    (``sim.timing.stream_cycles``).

    With ``p = x*M`` and ``t = 2p >> s``, ``(p + 2**(s-1)) >> s == (t + 1) >> 1``,
    so the rounding and the zero point are one addition, ``y = (t + 2z + 1) >> 1``,
    and the rails are two comparisons that do not wait for it: ``y > hi`` iff
    ``t >= 2(hi - z) + 1``, ``y < lo`` iff ``t < 2(lo - z) - 1``. Nor for the last
    part of the shift: with ``t = floor(u / 2**f)``, ``t >= a`` iff ``u >= a << f``.
    A ``t`` outside ``out_bits + 3`` bits saturates whatever ``z`` is, so the
    coarse shift keeps only the bits of ``u`` a fine shift can bring into that
    range. The six stages:

    1. table read (x and the op's width and signedness registered with it);
    2. the entry registered: the block RAM's output is slow (5.8 ns on an
       ECP5) and drives only these registers; the op's rails;
    3. ``x_hi * M`` and ``x_lo * M`` for the two halves of x, one DSP block each
       at 32-bit x (or ``x << log2(M)``); the two thresholds;
    4. ``p`` from the partial products, ``2p`` shifted right by the multiple of
       ``2**FINE_BITS`` in ``s``, kept to the bits a fine shift can bring into
       range, with a flag for "out of range whatever the fine shift"; the
       thresholds shifted left by the fine shift;
    5. the fine shift of ``u``, beside its two comparisons: which rail, and
       whether one is taken;
    6. the rounding with zero point (one addition), and the select between it
       and the rail.

    Shift amounts beyond the product width act as the product width (clamped
    when the table is loaded), so the shifter only spans the product.
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
        # table read, entry, partial products (or left shift), sum and coarse shift, fine shift and rails, rounding
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
        ob, w = self.out_bits, self.prod_bits
        t_bits = ob + 3  # a t beyond this range saturates; 2(hi - z) + 1 and 2(lo - z) - 1 lie within it
        keep = min(t_bits + (1 << FINE_BITS) - 1, w + 1)  # what a fine shift of at most 7 can bring into t_bits
        half = self.in_bits // 2  # x = x_hi * 2**half + x_lo
        fields = {"shift": unsigned(self.shift_bits), "zp": signed(ob + 1)}
        if self.pow2:
            fields["log2_m"] = range(self.mult_bits)
        else:
            fields["m"] = unsigned(self.mult_bits)
        entry = data.StructLayout(fields)
        row = Signal(entry)
        m.d.comb += [row.shift.eq(Mux(self.tbl_shift > w, w, self.tbl_shift)), row.zp.eq(self.tbl_zp)]
        if self.pow2:  # the loaded M's leading one, found once at load time
            for bit in range(self.mult_bits):
                with m.If(self.tbl_m[bit]):
                    m.d.comb += row.log2_m.eq(bit)
        else:
            m.d.comb += row.m.eq(self.tbl_m)
        reads = lane_tables(m, "table", entry, self.channels, self.lanes,
                            {"en": self.tbl_we, "addr": self.tbl_addr, "data": row})

        # the op's rails, from the width and signedness taken with the beat (stage 1), a copy a lane from
        # stage 2 on (one shared copy reached every lane's thresholds and rail select)
        width1 = delay(m, self.out_width, 1, "width")
        signed1 = delay(m, self.out_signed, 1, "signed")
        top = Signal(unsigned(ob + 1))
        m.d.comb += top.eq(1 << (width1 - signed1).as_unsigned())

        for lane in range(self.lanes):
            hi2, lo2 = replica(signed(ob + 1), f"hi_s2_{lane}"), replica(signed(ob + 1), f"lo_s2_{lane}")
            m.d.sync += [hi2.eq(top - 1), lo2.eq(Mux(signed1, -top, 0))]
            hi4, lo4 = (delay(m, rail[:ob], 2, f"{name}_{lane}") for rail, name in ((hi2, "hi"), (lo2, "lo")))
            rd = reads[lane]  # stage 1: table entry and x arrive together
            m.d.comb += rd.addr.eq(self.i_ch[lane])
            # stage 2: the entry registered, so that the block RAM's slow output drives nothing else
            e2 = delay(m, rd.data, 1, f"entry_{lane}")
            x2 = delay(m, self.i_x[lane], 2, f"x_{lane}")

            # stage 3: the partial products, or the left shift; the thresholds against zp
            s3 = delay(m, e2.shift, 1, f"s_{lane}")
            z3 = delay(m, e2.zp, 1, f"z_{lane}")
            at_hi = Signal(signed(t_bits), name=f"at_hi_{lane}")  # y > hi iff t >= at_hi
            below_lo = Signal(signed(t_bits), name=f"below_lo_{lane}")  # y < lo iff t < below_lo
            m.d.sync += [at_hi.eq(((hi2 - e2.zp) << 1) + 1), below_lo.eq(((lo2 - e2.zp) << 1) - 1)]
            twice_p = Signal(signed(w + 1), name=f"twice_p_{lane}")  # 2p, formed in stage 4
            if self.pow2:
                p3 = Signal(signed(w), name=f"p3_{lane}")
                m.d.sync += p3.eq(x2 << e2.log2_m)
                m.d.comb += twice_p.eq(p3 << 1)
            else:
                p_lo = Signal(unsigned(half + self.mult_bits), name=f"p_lo_{lane}")
                p_hi = Signal(signed(self.in_bits - half + self.mult_bits), name=f"p_hi_{lane}")
                m.d.sync += [p_lo.eq(x2[:half] * e2.m), p_hi.eq(x2[half:].as_signed() * e2.m)]
                m.d.comb += twice_p.eq(Cat(Const(0, 1), p_lo[:half], p_hi + p_lo[half:]))

            # stage 4: p, its coarse shift and whether it stays out of range whatever the fine shift; the
            # thresholds shifted left by the fine shift, so that stage 5 compares before shifting. The range
            # test is made on 2p for every coarse shift at once and the one of this shift picked, so that it
            # does not wait for the shifter
            step = s3[FINE_BITS:]
            coarse = twice_p >> (step << FINE_BITS)
            fits_at = Cat(*[fits_signed(twice_p >> (k << FINE_BITS), keep)
                            for k in range((w >> FINE_BITS) + 1)])  # s3 <= w (clamped at load)
            u4 = Signal(signed(keep), name=f"u4_{lane}")
            wide4 = Signal(name=f"wide4_{lane}")
            m.d.sync += [u4.eq(coarse[:keep]), wide4.eq(~fits_at.bit_select(step, 1))]
            neg4 = delay(m, twice_p[-1], 1, f"neg_{lane}")
            fine = s3[:FINE_BITS]
            fine4 = delay(m, fine, 1, f"fine_{lane}")
            z4 = delay(m, z3, 1, f"z4_{lane}")
            at_hi4 = Signal(signed(t_bits + (1 << FINE_BITS) - 1), name=f"at_hi4_{lane}")
            below_lo4 = Signal(signed(t_bits + (1 << FINE_BITS) - 1), name=f"below_lo4_{lane}")
            m.d.sync += [at_hi4.eq(at_hi << fine), below_lo4.eq(below_lo << fine)]

            # stage 5: the fine shift, beside the rail tests on u (which rail, and whether one is taken)
            t5 = Signal(signed(ob + 1), name=f"t_{lane}")  # the bits of t the kept bits of (t + 2z + 1) >> 1 need
            rail5 = Signal(unsigned(ob), name=f"rail_{lane}")
            sat5 = Signal(name=f"sat_{lane}")
            m.d.sync += [t5.eq(u4 >> fine4),
                         sat5.eq(wide4 | (u4 >= at_hi4) | (u4 < below_lo4)),
                         rail5.eq(Mux(wide4, Mux(neg4, lo4, hi4), Mux(u4 >= at_hi4, hi4, lo4)))]
            z5 = delay(m, z4, 1, f"z5_{lane}")

            # stage 6: the rounding with zero point, and the select between it and the rail
            rounded = (t5 + Cat(Const(1, 1), z5))[1:ob + 1]
            y = Signal(unsigned(ob), name=f"y_{lane}")
            m.d.sync += y.eq(Mux(sat5, rail5, rounded))
            m.d.comb += self.o_y[lane].eq(delay(m, y, self.latency - self.min_latency, f"y_{lane}"))
        m.d.comb += self.o_valid.eq(delay(m, self.i_valid, self.latency, "valid"))
        return m
