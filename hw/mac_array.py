"""The MAC array: ``sim.intops.linear`` / ``accumulate`` on a weight-stationary systolic array."""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.common import ParameterError, check_bool, check_int, delay, int_bounds, saturate, signed_width, tree
from sim import intops, timing
from sim.accel import mac_array_params

PRODUCTS = ("lut", "dsp")
#: the shifts one partial-sum chain spans in log2 mode: two chains for 4-bit codes; a wider window needs more
#: coarse-shift steps in every PE, a narrower one more chains
LOG2_WINDOW = 8


def _bits_for(bound: int) -> int:
    """Signed width holding [-bound, bound]."""
    return bound.bit_length() + 1


def lut_product(m: Module, x, w, name: str) -> Signal:
    """``x * w`` of two signed values as a Baugh-Wooley sum of AND terms: logic and one short carry chain.

    Yosys maps a ``*`` of any two operands of 2 bits or more to an 18x18 DSP; this sum of partial-product
    rows it keeps in LUTs. The result is truncated to ``len(x) + len(w)`` bits before it is used, which
    keeps Yosys from merging the rows into the partial sum's adder (that one wide tree costs ~3x the LUTs).
    """
    a, b = len(x), len(w)
    rows, offset = [], 0
    for i in range(a):
        bits = []
        for j in range(b):
            term = x[i] & w[j]
            if (i == a - 1) != (j == b - 1):  # a negative term: -t * 2**k == (1 - t) * 2**k - 2**k
                term, offset = ~term, offset - (1 << (i + j))
            bits.append(term)
        rows.append(Cat(*bits).as_unsigned() << i)
    total = Const(offset, signed(a + b + 1))
    for row in rows:
        total = total + row
    product = Signal(signed(a + b), name=name)
    m.d.comb += product.eq(total)
    return product


def log2_plan(code_bits: int, radix: int) -> tuple[dict, dict[bool, list[int]]]:
    """How the array adds ``V * log2_weights(c)`` with no shifter per weight.

    A weight is ``2**s`` (base 2, even sqrt(2) codes) or ``181 * 2**s`` (odd sqrt(2) codes, whose
    ``2**(K - (c-1)/2) * 181 >> 8`` is exact: K - (c-1)/2 >= 8).
    Each column keeps one partial sum per (``s // LOG2_WINDOW``, odd) pair a base uses, and the PE
    adds ``V * 2**(s % LOG2_WINDOW)`` to its code's chain: its multiplier takes ``2**b``
    (``b < radix``) in place of the activation and the product moves up by ``radix * a`` bits. The
    column bottom adds each chain times its factor, ``(181 if odd else 1) << (LOG2_WINDOW * window)``.
    Returns ``{(sqrt2, code): (chain, a, b)}`` (None for the zero code) and per base the chain factors;
    chain 0 of base 2 has factor 1 and holds the plain products.
    """
    top = (1 << code_bits) - 2
    plan, factors = {}, {}
    for sqrt2 in (False, True):
        k = intops.log2_acc_shift(code_bits, sqrt2)
        entries = {}
        for c in range(top + 1):
            odd = sqrt2 and c % 2 == 1
            shift = k - c // 2 - 8 if odd else k - (c // 2 if sqrt2 else c)
            entries[c] = ((shift // LOG2_WINDOW, odd), shift % LOG2_WINDOW)
        keys = sorted({key for key, _ in entries.values()})  # base 2 starts with (0, even)
        for c in range(1 << code_bits):
            key, f = entries.get(c, (None, 0))
            plan[sqrt2, c] = None if key is None else (keys.index(key), f // radix, f % radix)
        factors[sqrt2] = [(intops.SQRT_HALF_Q8 if odd else 1) << (LOG2_WINDOW * win) for win, odd in keys]
    n = max(len(f) for f in factors.values())
    return plan, {b: f + [0] * (n - len(f)) for b, f in factors.items()}


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

    A PE holds its weight, its activation and a partial sum as wide as the
    sum of rows 0 to its own can get. ``products``: ``"lut"`` builds the
    product from partial products in logic (:func:`lut_product`; the default
    up to 4 x 4 bits), ``"dsp"`` writes ``x * w``, one 18x18 DSP per PE in
    Yosys (the default for wider operands: in LUTs an 8 x 8 product costs
    ~10x a 4 x 4 one).

    ``log2`` is a build mode of its own, for programs with ``matmul_log2``:
    the PEs also run ``sim.intops.matmul_log2``. A fold flagged ``w_log2``
    holds V as its weights and streams ``code_bits`` log2 codes (``w_sqrt2``:
    base sqrt(2), odd codes through the constant 181/256); the zero code adds
    nothing. Each row decodes its code once (:func:`log2_plan`) into a power
    of two for the PE's multiplier, a coarse shift of the product and one of
    a few partial-sum chains per column, which the column bottom adds with
    constant factors (shift-adds): no shifter or x181 per PE. ``linear`` and
    activation x activation ``matmul`` are the plain mode (a matmul has no bias).

    ``binary`` builds the binary modes (the default): a fold flagged ``w_binary`` holds sign bits (1: +1,
    0: -1) and streams 1-bit operands, ``sim.timing.binary_pack`` of them in each PE's weight register and
    activation lane (bit j of lane r is reduction index ``r * pack + j`` of the fold), so a fold covers
    ``rows * pack`` reduction indices. In place of its product a PE makes the sum of its ``pack`` binary
    products: ``sim.intops.xnor_popcount``'s ±1 x ±1 (equal bits +1, different bits -1), or with ``w_and``
    ``sim.intops.and_popcount``'s {0,1} x ±1 (a 0 adds nothing); the sum joins the partial sums where the
    product would, so a binary fold takes the cycles of a plain one. A controller padding a reduction with
    zero bits in xnor mode adds +1 a padded index, which it takes off the bias.

    ``digits`` > 1 builds the digit passes of operands wider than ``act_bits`` (``sim.isa``): a fold's
    ``w_digit`` (taken with its weights, like ``w_first``) shifts its partial sums left by
    ``w_digit * act_bits`` before they are added, and the accumulator is exact for operands of
    ``digits * act_bits`` bits. With ``digits == 1`` there is no ``w_digit`` port.
    """

    def __init__(self, rows: int = 4, cols: int = 4, act_bits: int = 4, weight_bits: int = 4,
                 acc_bits: int = 32, max_m: int = 64, max_k: int = 4096, log2: bool = True, code_bits: int = 4,
                 products: str | None = None, digits: int = 1, binary: bool = True):
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
        self.digits = check_int(unit, "digits", digits, 1, 8)
        self.binary = check_bool(unit, "binary", binary)
        self.pack = timing.binary_pack(act_bits, weight_bits)  # binary products a PE sums per cycle
        if products is None:
            products = "lut" if act_bits <= 4 and weight_bits <= 4 else "dsp"
        if products not in PRODUCTS:
            raise ParameterError(f"MacArray: parameter 'products' = {products!r} is not one of {', '.join(PRODUCTS)}")
        self.products = products
        alo, ahi = int_bounds(act_bits)
        wlo, whi = int_bounds(weight_bits)
        plain = (min(alo * whi, ahi * wlo), alo * wlo)  # the range of one product
        self.chain_bounds = [plain]  # the range of one PE's term on each partial-sum chain
        column = plain  # ... and of one PE's share of the column's sum
        prod = 1 << (digits * act_bits + weight_bits - 2)  # largest |x*w|: most-negative times most-negative
        if log2:
            self.radix = min(act_bits - 1, LOG2_WINDOW)  # 2**b for b < radix fits the signed activation port
            self.plan, self.factors = log2_plan(code_bits, self.radix)
            self.a_bits = max(1, ((LOG2_WINDOW - 1) // self.radix).bit_length())  # the coarse shift's steps
            self.chain_bits = max(1, (len(self.factors[False]) - 1).bit_length())
            shifted = (wlo << (LOG2_WINDOW - 1), whi << (LOG2_WINDOW - 1))  # V * 2**(s % LOG2_WINDOW)
            self.chain_bounds = [(min(plain[0], shifted[0]), max(plain[1], shifted[1]))]
            self.chain_bounds += [shifted] * (len(self.factors[False]) - 1)
            big = max(intops.log2_weights(np.arange(1 << code_bits), code_bits, s).max() for s in (False, True))
            column = (min(plain[0], wlo * int(big)), max(plain[1], whi * int(big)))
            prod = max(prod, -wlo * int(big))
        self.psum_bits = signed_width(rows * column[0], rows * column[1])  # a column's sum
        self.acc_int_bits = _bits_for((1 << (acc_bits - 1)) + max_k * prod)  # exact over max_k terms and a bias
        digit_port = {"w_digit": In(range(digits))} if digits > 1 else {}
        binary_ports = {"w_binary": In(1), "w_and": In(1)} if binary else {}
        super().__init__({
            **digit_port,
            **binary_ports,
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
                "code_bits": self.code_bits, "products": self.products, "digits": self.digits,
                "binary": self.binary}

    def _product(self, m: Module, x, w, name: str):
        return lut_product(m, x, w, name) if self.products == "lut" else x * w

    def _binary_sum(self, m: Module, x, w, and_mode, name: str) -> Signal:
        """The sum of a PE's ``pack`` binary products: bit j of ``x`` against sign bit j of ``w``, each +1, -1
        or (and mode, ``x_j = 0``) 0; an adder tree of 2-bit terms."""
        terms = []
        for j in range(self.pack):
            agree = Signal(signed(2), name=f"{name}_t{j}")
            m.d.comb += agree.eq(Mux(x[j] == w[j], 1, -1))
            terms.append(Mux(and_mode & ~x[j], 0, agree))
        total = Signal(signed(signed_width(-self.pack, self.pack)), name=name)
        m.d.comb += total.eq(sum(terms[1:], terms[0]))
        return total

    def _decode(self, m: Module, r: int, x, sqrt2):
        """Row ``r``'s log2 code as the PE operand ``Cat(2**b or 0, a, chain)`` (:func:`log2_plan`)."""
        y = Signal(signed(self.act_bits), name=f"log2_y_{r}")
        a = Signal(self.a_bits, name=f"log2_a_{r}")
        chain = Signal(self.chain_bits, name=f"log2_chain_{r}")
        with m.Switch(Cat(x.as_unsigned()[:self.code_bits], sqrt2)):
            for (base, code), entry in self.plan.items():
                if entry is not None:
                    with m.Case(code | base << self.code_bits):
                        m.d.comb += [chain.eq(entry[0]), a.eq(entry[1]), y.eq(1 << entry[2])]
        return Cat(y, a, chain)

    def elaborate(self, platform):
        m = Module()
        rows, cols = self.rows, self.cols
        drain = timing.mac_drain_cycles(rows, cols)  # clock edges from the last input to the last output

        # control: load `rows` weight beats, stream `m` inputs, drain
        row_idx = Signal(range(rows))
        x_count = Signal(range(self.max_m + 1))
        drain_count = Signal(range(drain + 1))
        m_reg = Signal(range(self.max_m + 1))
        first = Signal()
        last = Signal()
        log2 = Signal()
        sqrt2 = Signal()
        digit = Signal(range(self.digits))
        binary = Signal()
        and_mode = Signal()
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
                        m.d.sync += [log2.eq(self.w_log2), sqrt2.eq(self.w_log2 & self.w_sqrt2)]
                    if self.digits > 1:
                        m.d.sync += digit.eq(self.w_digit)
                    if self.binary:
                        m.d.sync += [binary.eq(self.w_binary), and_mode.eq(self.w_binary & self.w_and)]
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

        # the array: PE (r, c) holds weight w[r][c]; its operand moves right, its partial sums down
        weights = [[Signal(signed(self.weight_bits), name=f"w_{r}_{c}") for c in range(cols)] for r in range(rows)]
        for r in range(rows):
            with m.If(w_fire & (row_idx == r)):
                m.d.sync += [weights[r][c].eq(self.w_row[c]) for c in range(cols)]
        x_left = [delay(m, self.x_vec[r], r, f"skew_{r}") for r in range(rows)]  # row r starts r cycles late
        chains = len(self.chain_bounds)
        above = [[None] * chains for _ in range(cols)]  # per column, the partial sum of each chain
        for r in range(rows):
            # the row's operand, registered (timing.MAC_IN_STAGES): the activation, or in a log2 fold its code
            # decoded once
            operand = x_left[r]
            if self.log2:
                operand = Mux(log2, self._decode(m, r, x_left[r], sqrt2), x_left[r].as_unsigned())
            op_in = delay(m, operand, 1, f"op_{r}")
            for c in range(cols):
                op_reg = Signal(op_in.shape(), name=f"x_{r}_{c}")
                m.d.sync += op_reg.eq(op_in)
                x = op_in[:self.act_bits].as_signed()
                # the product is registered (timing.MAC_PRODUCT_STAGES); its operand's shift and chain, a
                # cycle later, are the ones the next PE holds
                term = Signal(signed(self.act_bits + self.weight_bits), name=f"prod_reg_{r}_{c}")
                product = self._product(m, x, weights[r][c], f"prod_{r}_{c}")
                if self.binary:  # a binary fold's popcount takes the product's place (and its register)
                    popcount = self._binary_sum(m, x.as_unsigned(), weights[r][c].as_unsigned(), and_mode,
                                                f"popcount_{r}_{c}")
                    product = Mux(binary, popcount, product)
                m.d.sync += term.eq(product)
                if self.log2:
                    a = op_reg[self.act_bits:self.act_bits + self.a_bits]
                    chain = op_reg[self.act_bits + self.a_bits:]
                    for i in range(self.a_bits):  # the coarse shift, radix * a
                        term = Mux(a[i], term << (self.radix << i), term)
                for i in range(chains):
                    psum = Signal(signed(self._chain_width(i, r)), name=f"psum{i}_{r}_{c}")
                    mine = term if chains == 1 else Mux(chain == i, term, 0)
                    m.d.sync += psum.eq(mine if r == 0 else above[c][i] + mine)
                    above[c][i] = psum
                op_in = op_reg
        aligned = [delay(m, self._column_sum(m, above[c], sqrt2, digit, c), cols - 1 - c, f"deskew_{c}")
                   for c in range(cols)]
        aligned_valid = delay(m, x_fire, timing.mac_align_cycles(rows, cols), "aligned_valid")

        # accumulator buffer: one entry of `cols` exact sums per output row. The entry an aligned row needs is
        # read the cycle before (a block RAM's slow output is registered in logic beside the row: the stage
        # of timing.MAC_ACC_STAGES), the next edge registers the sum and its saturated output, and the sum is
        # written back. Two folds never touch one entry within three cycles, so the write needs no bypass.
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
        row = [delay(m, a, 1, f"row_{c}") for c, a in enumerate(aligned)]
        old = Signal(acc_layout)
        m.d.sync += old.eq(rd.data)
        row_valid, row_idx = delay(m, aligned_valid, 1, "row_valid"), delay(m, out_idx, 1, "row_idx")
        summed = Signal(acc_layout)
        summed_valid, summed_idx = delay(m, row_valid, 1, "summed_valid"), delay(m, row_idx, 1, "summed_idx")
        m.d.comb += [wr.addr.eq(summed_idx), wr.en.eq(summed_valid), wr.data.eq(summed)]
        o_acc = Signal.like(self.o_acc)
        o_valid = Signal()
        for c in range(cols):
            total = Signal(signed(self.acc_int_bits), name=f"total_{c}")
            m.d.comb += total.eq(Mux(first, bias[c], old[c]) + row[c])
            m.d.sync += [summed[c].eq(total), o_acc[c].eq(saturate(total, self.acc_bits))]
        m.d.sync += o_valid.eq(row_valid & last)
        m.d.comb += [self.o_acc.eq(o_acc), self.o_valid.eq(o_valid)]
        return m

    def _column_sum(self, m: Module, chains: list, sqrt2, digit, c: int):
        """Column ``c``'s sum, :data:`sim.timing.MAC_BOTTOM_STAGES` cycles after its last row: each chain times
        its factor (log2 mode: a constant, shift-adds of the chain gated by the base), an adder tree whose
        levels are split over the stages, the last stage also shifting the sum left by ``digit * act_bits``
        (a mux, no shifter; ``digits`` > 1 only)."""
        terms = []
        for i, p in enumerate(chains):
            ft, fb = (self.factors[True][i], self.factors[False][i]) if len(chains) > 1 else (1, 1)
            for b in range(max(ft, fb).bit_length()):
                on_t, on_b = ft >> b & 1, fb >> b & 1
                if on_t and on_b:
                    terms.append(p << b)
                elif on_t or on_b:
                    terms.append(Mux(sqrt2 if on_t else ~sqrt2, p << b, 0))
        stages = timing.MAC_BOTTOM_STAGES
        total = Signal(signed(self.psum_bits), name=f"column_{c}")
        m.d.comb += total.eq(tree(m, terms, stages - 1, f"column_{c}_tree") if stages > 1 else sum(terms))
        if self.digits == 1:
            shifted = total
        else:
            shifted = Signal(signed(self.psum_bits + (self.digits - 1) * self.act_bits), name=f"digit_shift_{c}")
            m.d.comb += shifted.eq(total)
            for d in range(1, self.digits):
                with m.If(digit == d):
                    m.d.comb += shifted.eq(total << (d * self.act_bits))
        out = Signal.like(shifted, name=f"column_sum_{c}")
        m.d.sync += out.eq(shifted)
        return out

    def _chain_width(self, chain: int, r: int) -> int:
        """Bits of partial-sum chain ``chain`` leaving row ``r``: the sum of ``r + 1`` terms."""
        lo, hi = self.chain_bounds[chain]
        return signed_width((r + 1) * lo, (r + 1) * hi)
