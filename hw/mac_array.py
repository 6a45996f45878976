"""The MAC array: ``sim.intops.linear`` / ``accumulate`` on a weight-stationary systolic array."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.common import ParameterError, check_bool, check_int, delay, saturate
from sim import intops
from sim.accel import mac_array_params


def _bits_for(bound: int) -> int:
    """Signed width holding [-bound, bound]."""
    return bound.bit_length() + 1


class MacArray(wiring.Component):
    """A ``rows`` x ``cols`` weight-stationary array of signed ``act_bits`` x ``weight_bits`` MACs.

    One *fold* computes ``m`` output rows of ``cols`` channels over ``rows``
    reduction indices: ``rows`` beats load the weights (beat r holds the
    weights of reduction index r for the ``cols`` channels), then ``m`` input
    vectors (``rows`` activations each) stream in; inside, activations move
    right and partial sums down with a one-cycle skew per row and column.
    The fold's ``m`` x ``cols`` partial sums land in an accumulator buffer
    that starts from ``bias`` on a fold flagged ``w_first`` and adds otherwise,
    exactly (it is wide enough for ``max_k`` reduction terms); a fold flagged
    ``w_last`` emits ``saturate(acc, acc_bits)`` rows on ``o_acc``. A fold takes
    ``sim.timing.mac_fold_cycles(m, rows, cols)`` clock edges, first weight
    beat to last output, and the next fold's weights are taken right after.

    With ``log2`` the PEs also run ``sim.intops.matmul_log2``: a fold flagged
    ``w_log2`` holds V as its weights and streams ``code_bits`` log2 codes,
    each PE adding ``V << (2**code_bits - 2 - c)`` (``w_sqrt2``: the base
    sqrt(2) weights, odd codes through the constant 181/256) and nothing for
    the zero code: shifts, no multiplier. ``linear`` and activation x
    activation ``matmul`` are the plain mode (a matmul has no bias).
    """

    def __init__(self, rows: int = 4, cols: int = 4, act_bits: int = 4, weight_bits: int = 4,
                 acc_bits: int = 32, max_m: int = 64, max_k: int = 4096, log2: bool = True, code_bits: int = 4):
        unit = "MacArray"
        self.rows = check_int(unit, "rows", rows, 1, 256)
        self.cols = check_int(unit, "cols", cols, 1, 256)
        self.act_bits = check_int(unit, "act_bits", act_bits, 2, 16)
        self.weight_bits = check_int(unit, "weight_bits", weight_bits, 2, 16)
        self.acc_bits = check_int(unit, "acc_bits", acc_bits, 8, 48)
        self.max_m = check_int(unit, "max_m", max_m, 1, 1 << 16)
        self.max_k = check_int(unit, "max_k", max_k, 1, 1 << 24)
        if max_k < rows:
            raise ParameterError(f"MacArray: parameter 'max_k' = {max_k} must be at least rows = {rows}")
        self.log2 = check_bool(unit, "log2", log2)
        self.code_bits = check_int(unit, "code_bits", code_bits, 2, min(5, act_bits))
        top = (1 << code_bits) - 2
        self.log2_k = {False: top, True: intops.log2_acc_shift(code_bits, True)}  # sqrt2 -> weight exponent
        prod = 1 << (act_bits + weight_bits - 2)  # largest |x*w|: most-negative times most-negative
        if log2:  # largest |V * 2**K|
            prod = max(prod, 1 << (weight_bits - 1 + max(self.log2_k.values())))
        self.psum_bits = _bits_for(rows * prod)
        self.acc_int_bits = _bits_for((1 << (acc_bits - 1)) + max_k * prod)  # exact over max_k terms and a bias
        super().__init__({
            "w_valid": In(1),
            "w_ready": Out(1),
            "w_row": In(data.ArrayLayout(signed(weight_bits), cols)),
            "w_first": In(1),
            "w_last": In(1),
            "w_log2": In(1),
            "w_sqrt2": In(1),
            "m": In(range(max_m + 1)),
            "bias": In(data.ArrayLayout(signed(acc_bits), cols)),
            "x_valid": In(1),
            "x_ready": Out(1),
            "x_vec": In(data.ArrayLayout(signed(act_bits), rows)),
            "o_valid": Out(1),
            "o_acc": Out(data.ArrayLayout(signed(acc_bits), cols)),
        })

    @classmethod
    def from_accel(cls, cfg, **overrides) -> "MacArray":
        """The MAC array of accelerator ``cfg`` (``sim.accel.mac_array_params``: shape, widths, the rows its
        accumulator buffer holds, the log2 codes it decodes), the limits ``sim.accel.check_program`` holds
        programs to."""
        return cls(**{**mac_array_params(cfg), **overrides})

    @property
    def params(self) -> dict:
        return {"rows": self.rows, "cols": self.cols, "act_bits": self.act_bits, "weight_bits": self.weight_bits,
                "acc_bits": self.acc_bits, "max_m": self.max_m, "max_k": self.max_k, "log2": self.log2,
                "code_bits": self.code_bits}

    def _term(self, x, w, log2, sqrt2):
        """One PE's product: ``x * w``, or in log2 mode ``w * log2_weights(code x)``."""
        if not self.log2:
            return x * w
        cb = self.code_bits
        code = x.as_unsigned()[:cb]
        k2, ks = self.log2_k[False], self.log2_k[True]
        base2 = (w << k2) >> code
        # sqrt(2): even c -> w << (K - c/2); odd c -> (w*181) << (K - 8 - (c-1)/2)
        c = intops.SQRT_HALF_Q8  # a constant: shift-adds, no multiplier
        odd = sum(w << b for b in range(c.bit_length()) if c >> b & 1) << (ks - 8)
        half = Mux(code[0], odd, w << ks) >> code[1:]
        shifted = Mux(code == (1 << cb) - 1, 0, Mux(sqrt2, half, base2))
        return Mux(log2, shifted, x * w)

    def elaborate(self, platform):
        m = Module()
        rows, cols = self.rows, self.cols
        drain = rows + cols - 1  # clock edges from the last input to the last output

        # control: load `rows` weight beats, stream `m` inputs, drain
        row_idx = Signal(range(rows))
        x_count = Signal(range(self.max_m + 1))
        drain_count = Signal(range(drain + 1))
        m_reg = Signal(range(self.max_m + 1))
        first = Signal()
        last = Signal()
        log2 = Signal()
        sqrt2 = Signal()
        bias = Signal(data.ArrayLayout(signed(self.acc_bits), cols))
        w_fire = Signal()
        x_fire = Signal()
        m.d.comb += [w_fire.eq(self.w_valid & self.w_ready), x_fire.eq(self.x_valid & self.x_ready)]
        with m.FSM():
            with m.State("LOAD"):
                m.d.comb += self.w_ready.eq(1)
                with m.If(w_fire):
                    m.d.sync += [first.eq(self.w_first), last.eq(self.w_last), m_reg.eq(self.m),
                                 bias.eq(self.bias), row_idx.eq(row_idx + 1)]
                    if self.log2:
                        m.d.sync += [log2.eq(self.w_log2), sqrt2.eq(self.w_sqrt2)]
                    with m.If(row_idx == rows - 1):
                        m.d.sync += [row_idx.eq(0), x_count.eq(0)]
                        m.next = "STREAM"
            with m.State("STREAM"):
                m.d.comb += self.x_ready.eq(1)
                with m.If(x_fire):
                    m.d.sync += x_count.eq(x_count + 1)
                    with m.If(x_count + 1 >= m_reg):
                        m.d.sync += drain_count.eq(0)
                        m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.sync += drain_count.eq(drain_count + 1)
                with m.If(drain_count == drain - 1):
                    m.next = "LOAD"

        # the array: PE (r, c) holds weight w[r][c]; x moves right, partial sums move down
        weights = [[Signal(signed(self.weight_bits), name=f"w_{r}_{c}") for c in range(cols)] for r in range(rows)]
        for r in range(rows):
            with m.If(w_fire & (row_idx == r)):
                m.d.sync += [weights[r][c].eq(self.w_row[c]) for c in range(cols)]
        x_left = [delay(m, self.x_vec[r], r, f"skew_{r}") for r in range(rows)]  # row r starts r cycles late
        psum_above = [None] * cols
        for r in range(rows):
            x_in = x_left[r]
            for c in range(cols):
                x_reg = Signal(signed(self.act_bits), name=f"x_{r}_{c}")
                psum = Signal(signed(self.psum_bits), name=f"psum_{r}_{c}")
                product = self._term(x_in, weights[r][c], log2, sqrt2)
                m.d.sync += [x_reg.eq(x_in), psum.eq(product if r == 0 else psum_above[c] + product)]
                psum_above[c] = psum
                x_in = x_reg
        aligned = [delay(m, psum_above[c], cols - 1 - c, f"deskew_{c}") for c in range(cols)]
        aligned_valid = delay(m, x_fire, rows + cols - 1, "aligned_valid")

        # accumulator buffer: one entry of `cols` exact sums per output row
        acc_layout = data.ArrayLayout(signed(self.acc_int_bits), cols)
        m.submodules.acc = acc = Memory(shape=acc_layout, depth=self.max_m, init=[])
        rd = acc.read_port()
        wr = acc.write_port()
        out_idx = Signal(range(self.max_m + 1))
        with m.If(aligned_valid):
            m.d.sync += out_idx.eq(out_idx + 1)
        with m.If(w_fire):  # a new fold numbers its outputs from 0
            m.d.sync += out_idx.eq(0)
        m.d.comb += rd.addr.eq(out_idx + aligned_valid)  # the entry the next aligned row will need
        m.d.comb += [wr.addr.eq(out_idx), wr.en.eq(aligned_valid)]
        o_acc = Signal.like(self.o_acc)
        o_valid = Signal()
        for c in range(cols):
            total = Signal(signed(self.acc_int_bits), name=f"total_{c}")
            m.d.comb += total.eq(bias[c] + aligned[c])
            with m.If(~first):
                m.d.comb += total.eq(rd.data[c] + aligned[c])
            m.d.comb += wr.data[c].eq(total)
            m.d.sync += o_acc[c].eq(saturate(total, self.acc_bits))
        m.d.sync += o_valid.eq(aligned_valid & last)
        m.d.comb += [self.o_acc.eq(o_acc), self.o_valid.eq(o_valid)]
        return m
