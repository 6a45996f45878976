"""The LayerNorm unit: ``sim.intops.layernorm`` on one row at a time, ``lanes`` channels per cycle."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.common import check_int, delay, replica, round_const, saturate, signed_width, tree
from sim import timing, widths
from sim.accel import layernorm_params

#: register stages from the edge that takes a beat to the row sum: the beat and its in_shift entries (a
#: read that Yosys folds into a block RAM), both again in logic, ``x << in_shift``, the masked terms, two
#: adder-tree stages, the accumulator
SUM_STAGES = 6
#: register stages of the sum of squares after a read: buffer data, ``x - mean`` (the stage that needs the
#: mean), the square, two adder-tree stages, the accumulator
SQUARE_STAGES, SQUARE_MEAN_STAGE = 6, 2
#: register stages of the output pass after a read: buffer data, ``x - mean``, ``d * r`` in pieces (the stage
#: that needs the reciprocal), their sum, round, saturate, ``* gamma``, ``+ beta``, shift, saturate
OUT_STAGES, OUT_RECIP_STAGE = 10, 3
#: one edge each: load the mean's division, give the mean its sign, load the square root, load the reciprocal
HAND_OVERS = 4
PIPELINE_EDGES = SUM_STAGES + SQUARE_STAGES - SQUARE_MEAN_STAGE + OUT_STAGES - OUT_RECIP_STAGE + HAND_OVERS
assert timing.layernorm_latency(16, 30, 1) == 16 + 16 + 31 + PIPELINE_EDGES, "sim.timing.layernorm_latency is the RTL's"
#: ``d * r`` is summed from ``d`` times these many bits of ``r`` at a time: each an 18x18 signed product
PIECE_BITS = 17


def _rounded(bits: int, k: int) -> int:
    """A quotient width made a multiple of ``k``: the extra leading quotient bits are zeros."""
    return k * -(-bits // k)


def _divide(rem, quo, dsr, dsr3, k: int):
    """``k`` more bits of a restoring division: ``quo``'s top bits go into the remainder ``rem`` (< ``dsr``),
    the quotient bits come in at its bottom. Radix-4 digits try ``dsr``, ``2*dsr`` and ``dsr3 = 3*dsr`` side by
    side (one subtraction deep); an odd ``k`` starts with a radix-2 digit. Returns the next ``rem``, ``quo``."""
    w = len(rem)
    for digit_bits in [1] * (k % 2) + [2] * (k // 2):
        shifted = Cat(quo[-digit_bits:], rem)
        diffs = [shifted - t for t in (dsr, dsr << 1, dsr3)[:(1 << digit_bits) - 1]]
        fits = [~diff[-1] for diff in diffs]  # the multiples that fit; each implies the smaller ones
        new = shifted[:w]
        for fit, diff in zip(fits, diffs):
            new = Mux(fit, diff[:w], new)
        digit = fits[0] if digit_bits == 1 else Cat(fits[0] & ~fits[1] | fits[2], fits[1])
        rem, quo = new, Cat(digit, quo[:-digit_bits])
    return rem, quo


class LayerNorm(wiring.Component):
    """Integer LayerNorm of a row of ``n`` signed ``in_bits`` channels (``n <= max_n``), per-channel affine.

    Three passes over a row buffer with fixed-length steps between them, each pass a pipeline:
    the input pass applies the power-of-two input factors (``x << in_shift``,
    which the program keeps inside ``in_bits``) and sums the row (an adder tree in two register
    stages, then the accumulator); a restoring divider gives the mean (round half up, ``in_bits``
    quotient bits); the second pass sums ``(x - mean)**2`` into ``S``; a digit-by-digit square root gives
    ``std = isqrt(floor(S / n))`` straight from ``S`` (the largest ``s`` with ``n*s*s <= S``, one bit a cycle,
    ``in_bits`` bits, no variance division); the divider gives ``floor(2**recip_bits / max(std, 1))``
    (``recip_bits + 1`` bits); the output pass computes
    ``n = sat16(round((x - mean) * r >> (recip_bits - frac_bits)))`` and
    ``y = sat(round((n * gamma + beta) >> shift), out_width)`` (``out_width <= out_bits``, held for
    the row, sign-extended onto ``o_y``) in nine register stages. The divider makes ``steps_per_cycle``
    quotient bits a cycle (radix-4 digits, a radix-2 one first when odd). The second and output passes
    read the buffer while the division before them ends: their first stages do not need its result.
    Every step count is fixed, so a row of B beats takes ``3*B + latency`` clock edges,
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
        self.steps_per_cycle = check_int(unit, "steps_per_cycle", steps_per_cycle, 1, timing.LN_MAX_STEPS_PER_CYCLE)
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
        row, the fewest divider bits a cycle that meet its configured latency), the limits
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
        lanes, xb, k = self.lanes, self.in_bits, self.steps_per_cycle
        n_bits = self.max_n.bit_length()
        q_mean, q_recip = _rounded(xb, k), _rounded(self.recip_bits + 1, k)
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
        # power-of-two input factors, needed as the row comes in: read with the beat (Yosys puts the table in a
        # block RAM, whose output is slow) and registered once more before the shift
        m.submodules.in_shifts = shifts = Memory(shape=data.ArrayLayout(unsigned(2), lanes), depth=self.depth, init=[])
        sh_wr, sh_rd = shifts.write_port(), shifts.read_port(domain="comb")
        m.d.comb += [sh_wr.en.eq(self.tbl_we), sh_wr.addr.eq(self.tbl_addr), sh_wr.data.eq(self.tbl_in_shift)]

        # the row's settings, taken with each beat, and what the passes derive from them
        n_reg = Signal(range(self.max_n + 1))
        shift = Signal(unsigned(self.shift_bits))
        out_width = Signal(range(2, self.out_bits + 1))
        n3 = Signal(n_bits + 2)
        nb = widths.LN_NORM_BITS
        aff_w = signed_width(-(1 << (nb - 1)) * ((1 << (self.gamma_bits - 1)) - 1) - (1 << (self.beta_bits - 1)),
                             (1 << (nb - 1)) * (1 << (self.gamma_bits - 1)) + (1 << (self.beta_bits - 1)) - 1)
        bias_w = max(self.beta_bits, aff_w + 1) + 1  # beta + the affine's rounding constant
        m.d.sync += n3.eq((n_reg << 1) + n_reg)

        ptr = Signal(range(self.depth + 1))
        n_beats = Signal(range(self.depth + 1))
        fire = Signal()
        m.d.comb += fire.eq(self.i_valid & self.i_ready)

        def lane_ok(beat, lane, n):  # channel beat*lanes + lane exists in this row
            return beat * lanes + lane < n

        # input pass: the taking edge registers the beat, its in_shift entries and its lanes that hold channels
        x0 = Signal.like(self.i_x)
        sh0 = Signal.like(sh_rd.data)
        ok0 = Signal(lanes)
        at0 = Signal.like(ptr)
        took, took_first, took_last = Signal(), Signal(), Signal()
        m.d.comb += sh_rd.addr.eq(ptr)
        m.d.sync += [x0.eq(self.i_x), sh0.eq(sh_rd.data), at0.eq(ptr),
                     ok0.eq(Cat(*[lane_ok(ptr, lane, self.n) for lane in range(lanes)])),
                     took.eq(fire), took_first.eq(fire & (ptr == 0)), took_last.eq(fire & self.i_last)]
        xr, shr = delay(m, x0, 1, "in_x"), delay(m, sh0, 1, "in_shift")  # the beat and its entries, in logic
        x1 = Signal.like(self.i_x)  # x << in_shift
        m.d.sync += [x1[lane].eq((xr[lane] << shr[lane])[:xb]) for lane in range(lanes)]
        ok1, at1, took1 = (delay(m, ok0, 2, "in_ok"), delay(m, at0, 2, "in_at"), delay(m, took, 2, "in_took"))
        m.d.comb += [buf_wr.addr.eq(at1), buf_wr.en.eq(took1), buf_wr.data.eq(x1)]
        terms = []
        for lane in range(lanes):  # the program keeps x << in_shift inside in_bits
            term = Signal(signed(xb), name=f"sum_x_{lane}")
            m.d.sync += term.eq(Mux(ok1[lane], x1[lane], 0))
            terms.append(term)
        beat_sum = tree(m, terms, 2, "sum")
        acc_stage = SUM_STAGES - 1  # the flags' delay to the accumulator's edge
        sum_took, sum_first = delay(m, took, acc_stage, "sum_took"), delay(m, took_first, acc_stage, "sum_first")
        total = Signal(signed(sum_bits))  # sum(x) + n//2, the mean's rounding
        with m.If(sum_took):
            m.d.sync += total.eq(Mux(sum_first, n_reg >> 1, total) + beat_sum)
        mean_load = delay(m, took_last, SUM_STAGES, "mean_load")

        # the shared divider: the mean, floor(|sum + n//2| / n) with the sign put back, then the reciprocal
        dw = max(n_bits, xb)  # its divisors: n, then std
        rem = Signal(dw)
        quo = Signal(max(q_mean, q_recip))
        dsr = Signal(dw)
        dsr3 = Signal(dw + 2)
        div_left = Signal(range(max(q_mean, q_recip) // k + 1))
        div_mean = Signal()  # the division under way is the mean's
        neg = Signal()
        mag = Signal(sum_bits)
        m.d.comb += mag.eq(Mux(total < 0, ~total + n_reg, total))  # -total + n - 1: floor division of a negative
        root = Signal(xb)
        recip_load = Signal()  # the edge after the square root's last bit
        std = Mux(root == 0, 1, root)
        nxt_rem, nxt_quo = _divide(rem, quo, dsr, dsr3, k)
        with m.If(mean_load):
            m.d.sync += [rem.eq(mag >> q_mean), quo.eq(mag[:q_mean] << (len(quo) - q_mean)), dsr.eq(n_reg),
                         dsr3.eq(n3), div_left.eq(q_mean // k), div_mean.eq(1), neg.eq(total < 0)]
        with m.Elif(recip_load):
            m.d.sync += [rem.eq(0), quo.eq((1 << self.recip_bits) << (len(quo) - q_recip)), dsr.eq(std),
                         dsr3.eq((std << 1) + std), div_left.eq(q_recip // k), div_mean.eq(0)]
        with m.Elif(div_left != 0):
            m.d.sync += [rem.eq(nxt_rem), quo.eq(nxt_quo), div_left.eq(div_left - 1)]
        mean_fix = Signal()
        mean = Signal(signed(xb + 1))
        m.d.sync += mean_fix.eq(div_mean & (div_left == 1))
        with m.If(mean_fix):
            m.d.sync += mean.eq(Mux(neg, -quo[:q_mean], quo[:q_mean]))
        recip = quo[:q_recip]

        # second and output passes: reads issued by the FSM below; both start with the buffer data and x - mean
        sq_issue, sq_first, sq_last = Signal(), Signal(), Signal()
        out_issue, out_last = Signal(), Signal()
        sq_ok = Signal(lanes)  # lanes that hold channels (all lanes in the output pass)
        m.d.sync += [sq_issue.eq(0), sq_first.eq(0), sq_last.eq(0), out_issue.eq(0), out_last.eq(0),
                     sq_ok.eq(Const(-1, lanes))]
        ok1 = Signal(lanes)
        m.d.sync += ok1.eq(sq_ok)
        devs = []
        for lane in range(lanes):
            x_r = Signal(signed(xb), name=f"rd_x_{lane}")
            dev = Signal(signed(xb + 1), name=f"dev_{lane}")
            m.d.sync += [x_r.eq(buf_rd.data[lane]), dev.eq(Mux(ok1[lane], x_r - mean, 0))]
            devs.append(dev)

        # second pass: S = sum((x - mean)**2) over the row's channels
        squares = []
        for lane, dev in enumerate(devs):
            sq = Signal(unsigned(2 * xb), name=f"sq_{lane}")
            m.d.sync += sq.eq(dev * dev)
            squares.append(sq)
        sq_sum = tree(m, squares, 2, "sumsq")
        sumsq = Signal(unsigned(sumsq_bits))
        sq_took, sq_took_first = (delay(m, sq_issue, SQUARE_STAGES - 1, "sq_took"),
                                  delay(m, sq_first, SQUARE_STAGES - 1, "sq_took_first"))
        with m.If(sq_took):
            m.d.sync += sumsq.eq(Mux(sq_took_first, 0, sumsq) + sq_sum)
        root_load = delay(m, sq_last, SQUARE_STAGES, "root_load")

        # the square root: isqrt(floor(S/n)) is the largest s with n*s*s <= S, found a bit a cycle from the top.
        # rt_rem = (S >> 2i) - n*s*s for the root's bits so far, rt_c = 4*n*s + n the next trial's subtrahend
        rt_rem = Signal(n_bits + xb + 1)  # < n*(2*s + 1)
        rt_c = Signal(n_bits + xb + 2)
        rt_bits = Signal(2 * xb)  # the low bits of S still to come in, two a step
        rt_left = Signal(range(xb + 1))
        trial = Cat(rt_bits[-2:], rt_rem)
        diff = trial - rt_c
        fits = ~diff[-1]
        with m.If(root_load):
            m.d.sync += [rt_rem.eq(sumsq >> (2 * xb)), rt_bits.eq(sumsq[:2 * xb]), rt_c.eq(n_reg), root.eq(0),
                         rt_left.eq(xb)]
        with m.Elif(rt_left != 0):
            m.d.sync += [rt_rem.eq(Mux(fits, diff, trial)), rt_c.eq(Mux(fits, (rt_c << 1) + n3, (rt_c << 1) - n_reg)),
                         root.eq(Cat(fits, root)), rt_bits.eq(rt_bits << 2), rt_left.eq(rt_left - 1)]
        m.d.sync += recip_load.eq(rt_left == 1)

        # output pass: d * r from 17-bit pieces of r, round and saturate to the normalized value, the affine,
        # its rounding shift and the op's range; gamma and beta are read when the normalized value is near
        norm_shift = self.recip_bits - self.frac_bits
        pieces = [recip[i:i + PIECE_BITS] for i in range(0, q_recip, PIECE_BITS)]
        aff_read_at = 6  # the output stage that takes gamma and beta off the table's read port
        m.d.comb += aff_rd.addr.eq(delay(m, ptr, aff_read_at - 1, "aff_addr"))
        y = Signal.like(self.o_y)
        for lane, dev in enumerate(devs):
            parts = [Signal(signed(xb + 2 + len(p)), name=f"out_part{j}_{lane}") for j, p in enumerate(pieces)]
            m.d.sync += [part.eq(dev * p) for part, p in zip(parts, pieces)]
            prod = parts[-1]
            for part in reversed(parts[:-1]):  # part + (higher << PIECE_BITS), adding above its low bits only
                prod = Cat(part[:PIECE_BITS], prod + (part >> PIECE_BITS)).as_signed()
            prod_r = Signal(signed(len(prod)), name=f"out_prod_{lane}")
            norm = Signal(signed(nb), name=f"out_norm_{lane}")
            rounded = Signal(signed(len(prod) - norm_shift + 1), name=f"out_round_{lane}")
            m.d.sync += [prod_r.eq(prod), rounded.eq(((prod_r >> (norm_shift - 1)) + 1) >> 1),
                         norm.eq(saturate(rounded, nb))]
            gamma = Signal(signed(self.gamma_bits), name=f"out_gamma_{lane}")
            beta = Signal(signed(self.beta_bits), name=f"out_beta_{lane}")
            # the row's shift and output range, a copy a lane (one shared copy reached every lane's rounding,
            # shifter and clamp): sc, its rounding constant rc, y_hi / y_lo, and y_top, the bits from
            # out_width - 1 up of the shifted value
            sc = replica(range(aff_w + 1), f"out_sc_{lane}")
            rc = Signal(aff_w, name=f"out_rc_{lane}")
            y_hi = replica(signed(self.out_bits + 1), f"out_hi_{lane}")
            y_lo = Signal(signed(self.out_bits + 1), name=f"out_lo_{lane}")
            y_top = Signal(bias_w + 1, name=f"out_top_{lane}")
            m.d.sync += [sc.eq(Mux(shift > aff_w, aff_w, shift)), rc.eq(round_const(sc, aff_w)),
                         y_hi.eq((1 << (out_width - 1).as_unsigned()) - 1), y_lo.eq(~y_hi), y_top.eq(~y_hi)]
            bias = Signal(signed(bias_w), name=f"out_bias_{lane}")
            m.d.sync += [gamma.eq(aff_rd.data.gamma[lane]), beta.eq(aff_rd.data.beta[lane]), bias.eq(beta + rc)]
            scaled = Signal(signed(nb + self.gamma_bits), name=f"out_scaled_{lane}")
            affine_v = Signal(signed(len(bias) + 1), name=f"out_affine_{lane}")
            shifted = Signal.like(affine_v, name=f"out_shifted_{lane}")
            # the op's range as reductions, no comparator: above y_hi is a positive value with a bit set from
            # out_width - 1 up, below y_lo a negative one with a bit clear there
            sign, top = shifted[-1], shifted & y_top
            above, below = ~sign & top.any(), sign & (top != y_top)
            m.d.sync += [scaled.eq(norm * gamma), affine_v.eq(scaled + bias), shifted.eq(affine_v >> sc),
                         y[lane].eq(Mux(above, y_hi, Mux(below, y_lo, shifted[:len(y[lane])])))]
        m.d.comb += [self.o_y.eq(y), self.o_valid.eq(delay(m, out_issue, OUT_STAGES, "out_valid")),
                     self.o_last.eq(delay(m, out_last, OUT_STAGES, "out_last"))]

        # the passes and the waits between them: each wait ends where the next pass's first reads may start
        mean_wait = SUM_STAGES + q_mean // k + 2 - SQUARE_MEAN_STAGE
        std_wait = (SQUARE_STAGES + 2 + xb + q_recip // k - OUT_RECIP_STAGE) + self.latency - self.min_latency
        count = Signal(range(max(mean_wait, std_wait, OUT_STAGES) + 1))
        with m.FSM():
            with m.State("INPUT"):
                m.d.comb += self.i_ready.eq(1)
                with m.If(fire):
                    m.d.sync += [ptr.eq(ptr + 1), n_reg.eq(self.n), shift.eq(self.shift), out_width.eq(self.out_width)]
                    with m.If(self.i_last):
                        m.d.sync += [n_beats.eq(ptr + 1), ptr.eq(0), count.eq(mean_wait - 1)]
                        m.next = "MEAN"
            with m.State("MEAN"):  # the row sum's pipeline and the mean's division
                m.d.sync += count.eq(count - 1)
                with m.If(count == 0):
                    m.next = "SQUARES"
            with m.State("SQUARES"):
                m.d.comb += buf_rd.addr.eq(ptr)
                m.d.sync += [ptr.eq(ptr + 1), sq_issue.eq(1), sq_first.eq(ptr == 0), sq_last.eq(ptr + 1 == n_beats),
                             sq_ok.eq(Cat(*[lane_ok(ptr, lane, n_reg) for lane in range(lanes)]))]
                with m.If(ptr + 1 == n_beats):
                    m.d.sync += [ptr.eq(0), count.eq(std_wait - 1)]
                    m.next = "STD"
            with m.State("STD"):  # the sum of squares' pipeline, the square root, the reciprocal, the padding
                m.d.sync += count.eq(count - 1)
                with m.If(count == 0):
                    m.next = "OUTPUT"
            with m.State("OUTPUT"):
                m.d.comb += buf_rd.addr.eq(ptr)
                m.d.sync += [ptr.eq(ptr + 1), out_issue.eq(1), out_last.eq(ptr + 1 == n_beats)]
                with m.If(ptr + 1 == n_beats):
                    m.d.sync += [ptr.eq(0), count.eq(OUT_STAGES - 1)]
                    m.next = "TAIL"
            with m.State("TAIL"):  # the output pipeline empties; the next row's first beat meets its last result
                m.d.sync += count.eq(count - 1)
                with m.If(count == 0):
                    m.next = "INPUT"
        return m
