"""The LayerNorm unit: ``sim.intops.layernorm`` on one row at a time, ``lanes`` channels per cycle."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.common import check_int, round_const, saturate, signed_width
from sim import timing, widths
from sim.accel import layernorm_params



class LayerNorm(wiring.Component):
    """Integer LayerNorm of a row of ``n`` signed ``in_bits`` channels (``n <= max_n``), per-channel affine.

    Three passes over a row buffer with fixed-length steps between them:
    the input pass applies the power-of-two input factors (``x << in_shift``,
    which the program keeps inside ``in_bits``) and sums the row; a restoring
    divider gives the mean (round half up, ``in_bits`` quotient bits); the
    second pass sums ``(x - mean)**2``; the divider gives the variance
    (``2*in_bits`` bits); a digit-by-digit square root gives ``std``
    (``in_bits`` bits); the divider gives ``floor(2**recip_bits / max(std, 1))``
    (``recip_bits + 1`` bits); the output pass computes
    ``n = sat16(round((x - mean) * r >> (recip_bits - frac_bits)))`` and
    ``y = sat(round((n * gamma + beta) >> shift), out_width)`` (``out_width <= out_bits``, held for
    the row, sign-extended onto ``o_y``). The divider and
    the square root make ``steps_per_cycle`` result bits a cycle. Every step
    count is fixed, so a row of B beats takes ``3*B + latency`` clock edges,
    first beat in to last result out (``sim.timing.layernorm_row_cycles``),
    with ``latency`` at least :meth:`latency_for`.

    ``gamma``, ``beta`` and ``in_shift`` are loaded a beat (``lanes``
    channels) at a time through ``tbl_*``; ``n`` and ``shift`` are held for the row.
    """

    def __init__(self, in_bits: int = widths.LN_IN_BITS, out_bits: int = 8, max_n: int = 64, lanes: int = 1,
                 frac_bits: int = widths.LN_NORM_FRAC_BITS, recip_bits: int = widths.LN_RECIP_BITS,
                 gamma_bits: int = widths.LN_GAMMA_BITS, beta_bits: int = widths.LN_BETA_BITS, shift_bits: int = 6, steps_per_cycle: int = 1,
                 latency: int | None = None):
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
        self.steps_per_cycle = check_int(unit, "steps_per_cycle", steps_per_cycle, 1, 8)
        self.min_latency = self.latency_for(in_bits, recip_bits, steps_per_cycle)
        self.latency = check_int(unit, "latency", self.min_latency if latency is None else latency,
                                 self.min_latency, 1 << 12)
        self.depth = -(-max_n // lanes)
        super().__init__({
            "tbl_we": In(1),
            "tbl_addr": In(range(self.depth)),
            "tbl_gamma": In(data.ArrayLayout(signed(gamma_bits), lanes)),
            "tbl_beta": In(data.ArrayLayout(signed(beta_bits), lanes)),
            "tbl_in_shift": In(data.ArrayLayout(unsigned(2), lanes)),
            "n": In(range(max_n + 1)),
            "shift": In(unsigned(shift_bits)),
            "out_width": In(range(2, out_bits + 1)),
            "i_valid": In(1),
            "i_ready": Out(1),
            "i_x": In(data.ArrayLayout(signed(in_bits), lanes)),
            "i_last": In(1),
            "o_valid": Out(1),
            "o_y": Out(data.ArrayLayout(signed(out_bits), lanes)),
            "o_last": Out(1),
        })

    @classmethod
    def from_accel(cls, cfg, **overrides) -> "LayerNorm":
        """The LayerNorm unit of accelerator ``cfg`` (``sim.accel.layernorm_params``: the row buffer's widest
        row, the fewest divider / square-root bits a cycle that meet its configured latency), the limits
        ``sim.accel.check_program`` holds programs to."""
        return cls(**{**layernorm_params(cfg), **overrides})

    latency_for = staticmethod(timing.layernorm_latency)  #: the fixed per-row work (sim.timing)

    @property
    def params(self) -> dict:
        return {"in_bits": self.in_bits, "out_bits": self.out_bits, "max_n": self.max_n, "lanes": self.lanes,
                "frac_bits": self.frac_bits, "recip_bits": self.recip_bits, "gamma_bits": self.gamma_bits,
                "beta_bits": self.beta_bits, "shift_bits": self.shift_bits,
                "steps_per_cycle": self.steps_per_cycle, "latency": self.latency}

    def elaborate(self, platform):
        m = Module()
        lanes, xb = self.lanes, self.in_bits
        n_bits = self.max_n.bit_length()
        k = self.steps_per_cycle

        def rounded(bits):  # a step count made a multiple of k: extra leading quotient bits are zeros
            return k * -(-bits // k)

        q_mean, q_var, q_recip = rounded(xb), rounded(2 * xb), rounded(self.recip_bits + 1)
        sq_digits = rounded(xb)  # result bits of the square root
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
        # power-of-two input factors, needed as the row comes in: a small table read without a register
        m.submodules.in_shifts = shifts = Memory(shape=data.ArrayLayout(unsigned(2), lanes), depth=self.depth, init=[])
        sh_wr, sh_rd = shifts.write_port(), shifts.read_port(domain="comb")
        m.d.comb += [sh_wr.en.eq(self.tbl_we), sh_wr.addr.eq(self.tbl_addr), sh_wr.data.eq(self.tbl_in_shift)]

        n_reg = Signal(range(self.max_n + 1))
        shift = Signal(unsigned(self.shift_bits))
        out_width = Signal(range(2, self.out_bits + 1))
        y_hi = Signal(signed(self.out_bits + 1))  # the op's output range
        m.d.comb += y_hi.eq((1 << (out_width - 1).as_unsigned()) - 1)
        n_beats = Signal(range(self.depth + 1))
        ptr = Signal(range(self.depth + 1))
        tail = 4  # the output pipeline: product, normalized value, affine, shift and saturate
        count = Signal(range(max(q_var, q_recip, self.latency, tail) + 1))
        total = Signal(signed(sum_bits))
        sumsq = Signal(unsigned(sumsq_bits))
        mean = Signal(signed(xb + 1))
        fire = Signal()
        m.d.comb += fire.eq(self.i_valid & self.i_ready)

        def lane_ok(beat, lane, n):  # channel beat*lanes + lane exists in this row
            return beat * lanes + lane < n

        # the shared divider: restoring, k quotient bits a cycle, divisor pre-shifted
        div_w = max(xb + n_bits, sumsq_bits, self.recip_bits + 1) + 1
        ds_w = max(n_bits + q_var, xb + q_recip)
        rem = Signal(div_w)
        dsr = Signal(ds_w)
        quo = Signal(max(q_var, q_recip))
        new_rem, new_dsr, new_quo = rem, dsr, quo
        for _ in range(k):
            fits = new_rem >= new_dsr
            new_rem = Mux(fits, new_rem - new_dsr, new_rem)[:div_w]
            new_quo = Cat(fits, new_quo)[:len(quo)]
            new_dsr = new_dsr >> 1

        def div_load(dividend, divisor, q_bits):
            return [rem.eq(dividend), dsr.eq(divisor << (q_bits - 1)), quo.eq(0), count.eq(q_bits // k - 1)]

        div_step = [rem.eq(new_rem), dsr.eq(new_dsr), quo.eq(new_quo), count.eq(count - 1)]

        # digit-by-digit square root of the variance, k result bits a cycle
        sq_v = Signal(2 * sq_digits)
        sq_rem = Signal(sq_digits + 2)
        root = Signal(sq_digits)
        v_, r_, root_ = sq_v, sq_rem, root
        for _ in range(k):
            sq_in = Cat(v_[-2:], r_)  # remainder and the next two bits of the variance
            trial = Cat(Const(1, 2), root_)  # 4*root + 1
            fits = sq_in >= trial
            r_ = Mux(fits, sq_in - trial, sq_in)[:len(sq_rem)]
            root_ = Cat(fits, root_)[:len(root)]
            v_ = (v_ << 2)[:len(sq_v)]
        sq_step = [sq_v.eq(v_), sq_rem.eq(r_), root.eq(root_), count.eq(count - 1)]

        neg = Signal()
        pass_data = Signal()  # buf_rd.data holds a second-pass beat
        out_data = Signal()  # buf_rd.data / aff_rd.data hold an output-pass beat
        out_last = Signal()
        rd_ptr = Signal(range(self.depth + 1))  # the beat whose data is arriving
        m.d.sync += [pass_data.eq(0), out_data.eq(0), out_last.eq(0), rd_ptr.eq(ptr)]
        with m.FSM():
            with m.State("INPUT"):
                m.d.comb += [self.i_ready.eq(1), buf_wr.addr.eq(ptr), buf_wr.en.eq(fire), sh_rd.addr.eq(ptr)]
                for lane in range(lanes):  # x << in_shift; the program keeps it inside in_bits
                    m.d.comb += buf_wr.data[lane].eq((self.i_x[lane] << sh_rd.data[lane])[:xb])
                with m.If(fire):
                    beat_sum = 0
                    for lane in range(lanes):
                        beat_sum = beat_sum + Mux(lane_ok(ptr, lane, self.n), buf_wr.data[lane], 0)
                    m.d.sync += [total.eq(total + beat_sum), ptr.eq(ptr + 1), n_reg.eq(self.n),
                                 shift.eq(self.shift), out_width.eq(self.out_width)]
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
                m.d.sync += [sq_v.eq(quo[:2 * xb]), sq_rem.eq(0), root.eq(0), count.eq(sq_digits // k - 1)]
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
        nb = widths.LN_NORM_BITS
        aff_w = signed_width(-(1 << (nb - 1)) * ((1 << (self.gamma_bits - 1)) - 1) - (1 << (self.beta_bits - 1)),
                             (1 << (nb - 1)) * (1 << (self.gamma_bits - 1)) + (1 << (self.beta_bits - 1)) - 1)
        gamma_d = Signal.like(aff_rd.data.gamma)
        beta_d = Signal.like(aff_rd.data.beta)
        m.d.sync += [gamma_d.eq(aff_rd.data.gamma), beta_d.eq(aff_rd.data.beta)]
        y = Signal.like(self.o_y)
        for lane in range(lanes):
            d = Signal(signed(d_bits), name=f"out_d_{lane}")
            m.d.comb += d.eq(buf_rd.data[lane] - mean)
            prod = Signal(signed(d_bits + q_recip + 1), name=f"out_prod_{lane}")
            m.d.sync += prod.eq(d * recip)
            norm = Signal(signed(widths.LN_NORM_BITS), name=f"out_norm_{lane}")
            m.d.sync += norm.eq(saturate((prod + (1 << (norm_shift - 1))) >> norm_shift, widths.LN_NORM_BITS))
            g2, b2 = Signal(signed(self.gamma_bits), name=f"g2_{lane}"), Signal(signed(self.beta_bits), name=f"b2_{lane}")
            m.d.sync += [g2.eq(gamma_d[lane]), b2.eq(beta_d[lane])]
            affine_v = Signal(signed(aff_w), name=f"out_affine_{lane}")
            m.d.sync += affine_v.eq(norm * g2 + b2)
            sc = Signal(range(aff_w + 1), name=f"out_sc_{lane}")
            m.d.comb += sc.eq(Mux(shift > aff_w, aff_w, shift))
            rounded_y = (affine_v + round_const(sc, aff_w)) >> sc
            m.d.sync += y[lane].eq(Mux(rounded_y > y_hi, y_hi, Mux(rounded_y < -y_hi - 1, -y_hi - 1, rounded_y)))
        valid_pipe = [out_data]
        last_pipe = [out_last]
        for i in range(tail):
            v, l_ = Signal(name=f"out_valid_{i}"), Signal(name=f"out_last_{i}")
            m.d.sync += [v.eq(valid_pipe[-1]), l_.eq(last_pipe[-1])]
            valid_pipe.append(v)
            last_pipe.append(l_)
        m.d.comb += [self.o_y.eq(y), self.o_valid.eq(valid_pipe[-1]), self.o_last.eq(last_pipe[-1])]
        return m
