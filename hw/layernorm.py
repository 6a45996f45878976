"""The LayerNorm unit: ``sim.intops.layernorm`` on one row at a time, ``lanes`` channels per cycle."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.common import check_int, round_const, saturate, signed_width
from sim import intops

NORM_BITS = 16  #: the normalized value n saturates to 16 bits (sim.intops.layernorm step 5)


class LayerNorm(wiring.Component):
    """Integer LayerNorm of a row of ``n`` signed ``in_bits`` channels (``n <= max_n``), per-channel affine.

    Three passes over a row buffer with fixed-length steps between them:
    the input pass sums the row; a sequential divider gives the mean
    (round half up, ``in_bits`` steps); the second pass sums ``(x - mean)**2``;
    the divider gives the variance (``2*in_bits`` steps); a digit-by-digit
    square root gives ``std`` (``in_bits`` steps); the divider gives
    ``floor(2**recip_bits / max(std, 1))`` (``recip_bits + 1`` steps); the
    output pass computes ``n = sat16(round((x - mean) * r >> (recip_bits - frac_bits)))``
    and ``y = sat(round((n * gamma + beta) >> shift), out_bits)``. Every step
    count is fixed, so a row of B beats takes ``3*B + latency`` clock edges,
    first beat in to last result out (``sim.timing.layernorm_row_cycles``),
    with ``latency = 4*in_bits + recip_bits + 11`` at the minimum.

    ``gamma``/``beta`` are loaded a beat (``lanes`` channels) at a time through
    ``tbl_*``; ``n`` and ``shift`` are held for the row.
    """

    def __init__(self, in_bits: int = 16, out_bits: int = 8, max_n: int = 64, lanes: int = 1,
                 frac_bits: int = intops.LN_NORM_FRAC_BITS, recip_bits: int = intops.LN_RECIP_BITS,
                 gamma_bits: int = 16, beta_bits: int = 32, shift_bits: int = 6, latency: int | None = None):
        unit = "LayerNorm"
        self.in_bits = check_int(unit, "in_bits", in_bits, 2, 16)
        self.out_bits = check_int(unit, "out_bits", out_bits, 2, 32)
        self.max_n = check_int(unit, "max_n", max_n, 1, 1 << 14)
        self.lanes = check_int(unit, "lanes", lanes, 1, 64)
        self.recip_bits = check_int(unit, "recip_bits", recip_bits, 2, 40)
        self.frac_bits = check_int(unit, "frac_bits", frac_bits, 1, recip_bits - 1)
        self.gamma_bits = check_int(unit, "gamma_bits", gamma_bits, 2, 16)
        self.beta_bits = check_int(unit, "beta_bits", beta_bits, 2, 32)
        self.shift_bits = check_int(unit, "shift_bits", shift_bits, 1, 7)
        self.min_latency = 4 * in_bits + recip_bits + 11
        self.latency = check_int(unit, "latency", self.min_latency if latency is None else latency,
                                 self.min_latency, 1 << 12)
        self.depth = -(-max_n // lanes)
        super().__init__({
            "tbl_we": In(1),
            "tbl_addr": In(range(self.depth)),
            "tbl_gamma": In(data.ArrayLayout(signed(gamma_bits), lanes)),
            "tbl_beta": In(data.ArrayLayout(signed(beta_bits), lanes)),
            "n": In(range(max_n + 1)),
            "shift": In(unsigned(shift_bits)),
            "i_valid": In(1),
            "i_ready": Out(1),
            "i_x": In(data.ArrayLayout(signed(in_bits), lanes)),
            "i_last": In(1),
            "o_valid": Out(1),
            "o_y": Out(data.ArrayLayout(signed(out_bits), lanes)),
            "o_last": Out(1),
        })

    @property
    def params(self) -> dict:
        return {"in_bits": self.in_bits, "out_bits": self.out_bits, "max_n": self.max_n, "lanes": self.lanes,
                "frac_bits": self.frac_bits, "recip_bits": self.recip_bits, "gamma_bits": self.gamma_bits,
                "beta_bits": self.beta_bits, "shift_bits": self.shift_bits, "latency": self.latency}

    def elaborate(self, platform):
        m = Module()
        lanes, xb = self.lanes, self.in_bits
        n_bits = self.max_n.bit_length()
        q_mean, q_var, q_recip = xb, 2 * xb, self.recip_bits + 1  # quotient bits of the three divisions
        d_bits = xb + 1  # x - mean
        sum_bits = xb + n_bits + 1
        sumsq_bits = 2 * xb + n_bits

        m.submodules.buf = buf = Memory(shape=data.ArrayLayout(signed(xb), lanes), depth=self.depth, init=[])
        affine = data.StructLayout({"gamma": data.ArrayLayout(signed(self.gamma_bits), lanes),
                                    "beta": data.ArrayLayout(signed(self.beta_bits), lanes)})
        m.submodules.affine = aff = Memory(shape=affine, depth=self.depth, init=[])
        buf_wr, buf_rd = buf.write_port(), buf.read_port()
        aff_wr, aff_rd = aff.write_port(), aff.read_port()
        m.d.comb += [aff_wr.en.eq(self.tbl_we), aff_wr.addr.eq(self.tbl_addr),
                     aff_wr.data.gamma.eq(self.tbl_gamma), aff_wr.data.beta.eq(self.tbl_beta)]

        n_reg = Signal(range(self.max_n + 1))
        shift = Signal(unsigned(self.shift_bits))
        n_beats = Signal(range(self.depth + 1))
        ptr = Signal(range(self.depth + 1))
        count = Signal(range(max(q_var, q_recip, self.latency) + 1))
        total = Signal(signed(sum_bits))
        sumsq = Signal(unsigned(sumsq_bits))
        mean = Signal(signed(xb + 1))
        fire = Signal()
        m.d.comb += fire.eq(self.i_valid & self.i_ready)

        def lane_ok(beat, lane, n):  # channel beat*lanes + lane exists in this row
            return beat * lanes + lane < n

        # the shared sequential divider: quotient bit per cycle, divisor pre-shifted
        div_w = max(xb + n_bits, sumsq_bits, self.recip_bits + 1) + 1
        ds_w = max(n_bits + q_var, xb + q_recip)
        rem = Signal(div_w)
        dsr = Signal(ds_w)
        quo = Signal(max(q_var, q_recip))
        step_rem = Mux(rem >= dsr, rem - dsr, rem)
        step_bit = rem >= dsr

        def div_load(dividend, divisor, q_bits):
            return [rem.eq(dividend), dsr.eq(divisor << (q_bits - 1)), quo.eq(0), count.eq(q_bits - 1)]

        div_step = [rem.eq(step_rem), dsr.eq(dsr >> 1), quo.eq((quo << 1) | step_bit), count.eq(count - 1)]

        # digit-by-digit square root of the variance
        sq_v = Signal(2 * xb)
        sq_rem = Signal(xb + 3)
        root = Signal(xb)
        sq_in = Signal(xb + 3)
        sq_trial = Signal(xb + 3)
        m.d.comb += [sq_in.eq((sq_rem << 2) | sq_v[-2:]), sq_trial.eq((root << 2) | 1)]
        sq_fits = sq_in >= sq_trial
        sq_step = [sq_v.eq(sq_v << 2), sq_rem.eq(Mux(sq_fits, sq_in - sq_trial, sq_in)),
                   root.eq((root << 1) | sq_fits), count.eq(count - 1)]

        neg = Signal()
        pass_data = Signal()  # buf_rd.data holds a second-pass beat
        out_data = Signal()  # buf_rd.data / aff_rd.data hold an output-pass beat
        out_last = Signal()
        rd_ptr = Signal(range(self.depth + 1))  # the beat whose data is arriving
        m.d.sync += [pass_data.eq(0), out_data.eq(0), out_last.eq(0), rd_ptr.eq(ptr)]
        tail = 4  # output pipeline: product, normalized value, affine, shift and saturate
        with m.FSM():
            with m.State("INPUT"):
                m.d.comb += [self.i_ready.eq(1), buf_wr.addr.eq(ptr), buf_wr.en.eq(fire), buf_wr.data.eq(self.i_x)]
                with m.If(fire):
                    beat_sum = 0
                    for lane in range(lanes):
                        beat_sum = beat_sum + Mux(lane_ok(ptr, lane, self.n), self.i_x[lane], 0)
                    m.d.sync += [total.eq(total + beat_sum), ptr.eq(ptr + 1), n_reg.eq(self.n),
                                 shift.eq(self.shift)]
                    with m.If(self.i_last):
                        m.d.sync += [n_beats.eq(ptr + 1), ptr.eq(0)]
                        m.next = "MEAN_LOAD"
            with m.State("MEAN_LOAD"):  # floor((sum + n//2) / n) as a division of magnitudes
                a = total + (n_reg >> 1)
                m.d.sync += neg.eq(a < 0)
                m.d.sync += div_load(Mux(a < 0, -a + n_reg - 1, a), n_reg, q_mean)
                m.next = "MEAN_DIV"
            with m.State("MEAN_DIV"):
                m.d.sync += div_step
                with m.If(count == 0):
                    m.next = "MEAN_FIX"
            with m.State("MEAN_FIX"):
                m.d.sync += [mean.eq(Mux(neg, -quo[:xb + 1], quo[:xb + 1])), sumsq.eq(0)]
                m.next = "SQUARES"
            with m.State("SQUARES"):  # second pass: issue reads, the data is squared and summed a cycle later
                m.d.comb += buf_rd.addr.eq(ptr)
                m.d.sync += [ptr.eq(ptr + 1), pass_data.eq(1)]
                with m.If(ptr + 1 == n_beats):
                    m.next = "SQUARES_LAST"
            with m.State("SQUARES_LAST"):
                m.next = "VAR_LOAD"
            with m.State("VAR_LOAD"):
                m.d.sync += div_load(sumsq, n_reg, q_var)
                m.next = "VAR_DIV"
            with m.State("VAR_DIV"):
                m.d.sync += div_step
                with m.If(count == 0):
                    m.next = "SQRT_LOAD"
            with m.State("SQRT_LOAD"):
                m.d.sync += [sq_v.eq(quo[:2 * xb]), sq_rem.eq(0), root.eq(0), count.eq(xb - 1)]
                m.next = "SQRT"
            with m.State("SQRT"):
                m.d.sync += sq_step
                with m.If(count == 0):
                    m.next = "RECIP_LOAD"
            with m.State("RECIP_LOAD"):
                m.d.sync += div_load(1 << self.recip_bits, Mux(root == 0, 1, root), q_recip)
                m.next = "RECIP_DIV"
            with m.State("RECIP_DIV"):
                m.d.sync += div_step
                with m.If(count == 0):
                    m.d.sync += [ptr.eq(0), count.eq(0)]
                    m.next = "PAD" if self.latency > self.min_latency else "OUTPUT"
            if self.latency > self.min_latency:
                with m.State("PAD"):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == self.latency - self.min_latency - 1):
                        m.next = "OUTPUT"
            with m.State("OUTPUT"):  # third pass: issue reads, results leave `tail` cycles after the data
                m.d.comb += [buf_rd.addr.eq(ptr), aff_rd.addr.eq(ptr)]
                m.d.sync += [ptr.eq(ptr + 1), out_data.eq(1), out_last.eq(ptr + 1 == n_beats)]
                with m.If(ptr + 1 == n_beats):
                    m.d.sync += count.eq(0)
                    m.next = "TAIL"
            with m.State("TAIL"):
                m.d.sync += count.eq(count + 1)
                with m.If(count == tail - 1):
                    m.d.sync += [ptr.eq(0), total.eq(0)]
                    m.next = "INPUT"

        # second pass datapath: sum of squared deviations over the row's channels
        sq_sum = 0
        for lane in range(lanes):
            d = Signal(signed(d_bits), name=f"sq_d_{lane}")
            m.d.comb += d.eq(buf_rd.data[lane] - mean)
            sq_sum = sq_sum + Mux(lane_ok(rd_ptr, lane, n_reg), d * d, 0)
        with m.If(pass_data):
            m.d.sync += sumsq.eq(sumsq + sq_sum)

        # output pass datapath, four registers deep
        recip = quo[:q_recip]
        norm_shift = self.recip_bits - self.frac_bits
        aff_w = signed_width(-(1 << (NORM_BITS - 1)) * ((1 << (self.gamma_bits - 1)) - 1) - (1 << (self.beta_bits - 1)),
                             (1 << (NORM_BITS - 1)) * (1 << (self.gamma_bits - 1)) + (1 << (self.beta_bits - 1)) - 1)
        gamma_d = Signal.like(aff_rd.data.gamma)
        beta_d = Signal.like(aff_rd.data.beta)
        m.d.sync += [gamma_d.eq(aff_rd.data.gamma), beta_d.eq(aff_rd.data.beta)]
        y = Signal.like(self.o_y)
        for lane in range(lanes):
            d = Signal(signed(d_bits), name=f"out_d_{lane}")
            m.d.comb += d.eq(buf_rd.data[lane] - mean)
            prod = Signal(signed(d_bits + q_recip + 1), name=f"out_prod_{lane}")
            m.d.sync += prod.eq(d * recip)
            norm = Signal(signed(NORM_BITS), name=f"out_norm_{lane}")
            m.d.sync += norm.eq(saturate((prod + (1 << (norm_shift - 1))) >> norm_shift, NORM_BITS))
            g2, b2 = Signal(signed(self.gamma_bits), name=f"g2_{lane}"), Signal(signed(self.beta_bits), name=f"b2_{lane}")
            m.d.sync += [g2.eq(gamma_d[lane]), b2.eq(beta_d[lane])]
            affine_v = Signal(signed(aff_w), name=f"out_affine_{lane}")
            m.d.sync += affine_v.eq(norm * g2 + b2)
            sc = Signal(range(aff_w + 1), name=f"out_sc_{lane}")
            m.d.comb += sc.eq(Mux(shift > aff_w, aff_w, shift))
            m.d.sync += y[lane].eq(saturate((affine_v + round_const(sc, aff_w)) >> sc, self.out_bits))
        valid_pipe = [out_data]
        last_pipe = [out_last]
        for i in range(tail):
            v, l_ = Signal(name=f"out_valid_{i}"), Signal(name=f"out_last_{i}")
            m.d.sync += [v.eq(valid_pipe[-1]), l_.eq(last_pipe[-1])]
            valid_pipe.append(v)
            last_pipe.append(l_)
        m.d.comb += [self.o_y.eq(y), self.o_valid.eq(valid_pipe[-1]), self.o_last.eq(last_pipe[-1])]
        return m
