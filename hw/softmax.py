"""The log2 softmax unit: ``sim.intops.softmax_log2`` (or ``sim.intops.softmax_tulq``) on one row at a time,
``lanes`` elements per cycle."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.common import check_int, delay, tree
from sim import intops, timing, widths
from sim.accel import softmax_params


#: register stages of the lane max tree (4-way nodes, one per stage at 16 lanes; the running max follows) and
#: of the exp pass's adder tree (two adder levels a stage at 16 lanes)
MAX_TREE_STAGES, ADD_TREE_STAGES = 2, 2
#: the exp pass after the buffer read: difference and ROM, shift, the adder tree, the accumulator
EXP_STAGES = 2 + ADD_TREE_STAGES + 1
LOG_STAGES = 2  #: leading one and mantissa of the sum; the log ROM and the row's code offset
CODE_STAGES = 2  #: the code pass after the buffer read: difference (shared with the exp pass), code
#: a TULQ code pass's stages past CODE_STAGES (its second stage is -log2(p) rather than a code): the fraction's exp
#: ROM entry, the region test and the log level's exponent; the shifter's operand and its rounding bit; the shift
TULQ_STAGES = 3
assert TULQ_STAGES == timing.TULQ_EXTRA_STAGES, "sim.timing.TULQ_EXTRA_STAGES is the RTL's"
#: clock edges between the last exp read and the first code read: the code pass's difference stage runs
#: while the log2 of the sum finishes, so that its first beat meets the code offset
GAP = EXP_STAGES + LOG_STAGES - CODE_STAGES
#: the beats in and reads out (3 per beat) aside: the wait for the last max, the gap, the last codes' stages
PIPELINE_LATENCY = (MAX_TREE_STAGES - 1) + GAP + CODE_STAGES
assert PIPELINE_LATENCY == timing.LATENCY_RANGE["softmax"][0], "sim.timing.LATENCY_RANGE['softmax'] is the RTL's"


def _lt(a, b):
    """``a < b`` for signed values: the sign of their difference one bit wider (a carry chain's sum output,
    which reaches the fabric sooner than its carry out)."""
    return (a - b)[-1]


def _above(x, c: int):
    """``x > c`` for unsigned ``x`` and a constant ``c``: bits above ``c``'s, or ``c``'s own bits compared
    (none when ``c`` is all ones), so that no carry chain is spent on it."""
    n = c.bit_length()
    high = x[n:].any()
    return high if c == (1 << n) - 1 else high | (x[:n] > c)


def _max(values: list):
    """The max of a few signed values: their comparisons side by side, then a one-hot select (ties: the
    first), so that a tree level costs one carry chain."""
    n = len(values)
    lt = {(i, j): _lt(values[i], values[j]) for i in range(n) for j in range(i + 1, n)}
    out = 0
    for i in range(n):
        wins = Cat(*[~lt[i, j] for j in range(i + 1, n)], *[lt[j, i] for j in range(i)])
        out = out | Mux(wins.all(), values[i], 0)
    return out


class SoftmaxLog2(wiring.Component):
    """Softmax of a row of log2-unit scores, as ``code_bits`` log2 codes (``2**code_bits - 1``: zero) or as
    truncated uniform-log2 (TULQ) levels.

    A row arrives as beats of ``lanes`` scores ``i_t`` with a per-position
    ``i_mask`` (1: takes part), the last beat flagged ``i_last``. Three passes
    over a row buffer: (1) the input pass keeps the running max; (2) the exp
    pass sums ``EXP[d mod 2**frac_bits] >> (d >> frac_bits)`` with
    ``d = max - t`` (a 2**frac_bits-entry ROM and a shifter); then ``log2`` of
    the sum (priority encoder, a 2**log_bits-entry ROM); (3) the code pass
    emits ``q = clamp((L - exp_bits*2**frac_bits + d + 2**(frac_bits-1)) >> frac_bits)``, or with
    ``sqrt2`` (held for the row) the half-step codes ``clamp((2*(L - ...) + 2**(frac_bits-1)) >> frac_bits)``.
    With ``tulq`` (held for the row with ``knee``, ``step_bits``, ``grid_bits``) the code pass writes
    ``sim.intops.softmax_tulq``'s levels instead, ``sqrt2`` its log region's half steps, up to
    ``2**grid_bits`` on ``o_q``'s low bits: from ``l = L - exp_bits*2**frac_bits + d`` (the log ROM's third
    section: no half), the uniform level ``((EXP[l mod 2**frac_bits] >> (l >> frac_bits)) + 2**(rs-1)) >> rs
    << (grid_bits - step_bits)`` with ``rs = exp_bits - step_bits`` where ``l >> frac_bits < knee`` (a second
    exp ROM), else the log level ``2**(grid_bits - j)``, ``j = (l + 2**(frac_bits-1)) >> frac_bits``, 0 past
    ``grid_bits`` (half steps: ``j = (2 l + 2**(frac_bits-1)) >> frac_bits``, odd ``j`` a rounded
    ``181/256``, 0 past ``2 grid_bits``). The fields must satisfy ``softmax_tulq``'s ``0 <= knee <=
    step_bits <= grid_bits``, ``step_bits < exp_bits``.
    Every pass is pipelined, a register stage holding about one carry chain and a few LUT levels:
    :data:`MAX_TREE_STAGES` in the max tree, :data:`EXP_STAGES` after an exp read, :data:`LOG_STAGES`,
    :data:`CODE_STAGES` after a code read (:data:`PIPELINE_LATENCY` adds them up), :data:`TULQ_STAGES` more
    for TULQ levels. A row of B beats takes ``3*B + latency`` clock edges from its first beat
    in to its last code out (``sim.timing.softmax_row_cycles``; TULQ: :data:`TULQ_STAGES` more), and the
    next row's first beat is taken on the cycle that last code appears.
    """

    #: :data:`PIPELINE_LATENCY`: the wait for the last beat's max, the exp pipeline and log2 less what the
    #: code pass overlaps, the last codes' stages
    min_latency, max_latency = timing.LATENCY_RANGE["softmax"]

    def __init__(self, in_bits: int = widths.SOFTMAX_IN_BITS, max_len: int = 64, lanes: int = 1, code_bits: int = 4,
                 frac_bits: int = widths.SOFTMAX_FRAC_BITS, exp_bits: int = widths.SOFTMAX_EXP_BITS,
                 log_bits: int = widths.SOFTMAX_LOG_BITS, latency: int | None = None):
        unit = "SoftmaxLog2"
        self.in_bits = check_int(unit, "in_bits", in_bits, 2, 24)
        self.max_len = check_int(unit, "max_len", max_len, 1, 1 << 16)
        self.lanes = check_int(unit, "lanes", lanes, 1, 64)
        self.code_bits = check_int(unit, "code_bits", code_bits, 2, 5)
        self.frac_bits = check_int(unit, "frac_bits", frac_bits, 1, 10)
        self.exp_bits = check_int(unit, "exp_bits", exp_bits, 1, 30)
        self.log_bits = check_int(unit, "log_bits", log_bits, 1, 12)
        self.latency = check_int(unit, "latency", self.min_latency if latency is None else latency,
                                 self.min_latency, self.max_latency)
        self.depth = -(-max_len // lanes)
        self.sum_bits = (self.max_len << exp_bits).bit_length()  # a row sums at most max_len entries <= 2**exp_bits
        self.max_step = min(widths.MAX_TULQ_GRID_BITS, exp_bits - 1)  # TULQ's step_bits < exp_bits
        self.level_bits = widths.MAX_TULQ_GRID_BITS + 1  # TULQ levels: up to 2**grid_bits
        elem = data.StructLayout({"t": signed(in_bits), "mask": 1})
        self._elem = elem
        super().__init__({
            "i_valid": In(1),
            "i_ready": Out(1),
            "i_t": In(data.ArrayLayout(signed(in_bits), lanes)),
            "i_mask": In(data.ArrayLayout(unsigned(1), lanes)),
            "i_last": In(1),
            "sqrt2": In(1),
            "tulq": In(1),
            "knee": In(range(self.max_step + 1)),
            "step_bits": In(range(self.max_step + 1)),
            "grid_bits": In(range(widths.MAX_TULQ_GRID_BITS + 1)),
            "o_valid": Out(1),
            "o_q": Out(data.ArrayLayout(unsigned(max(code_bits, self.level_bits)), lanes)),
            "o_last": Out(1),
        })

    @classmethod
    def from_accel(cls, cfg, **overrides) -> "SoftmaxLog2":
        """The softmax unit of accelerator ``cfg`` (``sim.accel.softmax_params``: the row buffer's longest
        row, the fixed input grid and code width), the limits ``sim.accel.check_program`` holds programs to."""
        return cls(**{**softmax_params(cfg), **overrides})

    @property
    def params(self) -> dict:
        return {"in_bits": self.in_bits, "max_len": self.max_len, "lanes": self.lanes,
                "code_bits": self.code_bits, "frac_bits": self.frac_bits, "exp_bits": self.exp_bits,
                "log_bits": self.log_bits, "latency": self.latency}

    def elaborate(self, platform):
        m = Module()
        lanes, fb = self.lanes, self.frac_bits
        zero_code = (1 << self.code_bits) - 1
        row = data.ArrayLayout(self._elem, lanes)
        m.submodules.buf = buf = Memory(shape=row, depth=self.depth, init=[])
        wr = buf.write_port()
        rd = buf.read_port()
        exp_table = intops.exp2_table(fb, self.exp_bits).tolist()
        half = 1 << (fb - 1)
        # the log ROM holds the code offset's fraction: LOG[i] + half, after it 2*LOG[i] + half for sqrt2, and
        # after that LOG[i] for TULQ (-log2(p) itself: a level's rounding comes after its region test)
        log2_table = intops.log2_table(self.log_bits, fb).tolist()
        log_table = [v + half for v in log2_table] + [2 * v + half for v in log2_table] + log2_table
        # LUT ROMs: with their output (exp) or address (log) registered Yosys would try block RAMs, and
        # memory_libmap (0.23) runs out of memory on the exp ROM's 16 read ports; TULQ's exp ROM (read in the
        # code pass) is a second ROM rather than ``lanes`` more ports on the first
        logic = {"rom_style": "logic"}
        m.submodules.exp_rom = exp_rom = Memory(shape=unsigned(self.exp_bits + 1), depth=1 << fb, init=exp_table,
                                                attrs=logic)
        m.submodules.tulq_rom = tulq_rom = Memory(shape=unsigned(self.exp_bits + 1), depth=1 << fb,
                                                  init=exp_table, attrs=logic)
        m.submodules.log_rom = log_rom = Memory(shape=unsigned(fb + 3), depth=3 << self.log_bits, init=log_table,
                                                attrs=logic)

        gap = GAP + self.latency - self.min_latency  # the configured latency beyond the minimum, as gap cycles
        n_beats = Signal(range(self.depth + 1))
        ptr = Signal(range(self.depth + 1))
        count = Signal(range(max(gap, CODE_STAGES + TULQ_STAGES, MAX_TREE_STAGES) + 1))
        mx = Signal(signed(self.in_bits))
        total = Signal(self.sum_bits)
        fire = Signal()
        exp_data = Signal()  # rd.data holds an exp-pass beat
        exp_first = Signal()  # ... the row's first
        code_data = Signal()  # rd.data holds a code-pass beat
        code_last = Signal()  # ... the row's last
        m.d.comb += fire.eq(self.i_valid & self.i_ready)
        m.d.sync += [exp_data.eq(0), exp_first.eq(0), code_data.eq(0), code_last.eq(0)]

        first_beat = Signal(init=1)
        sqrt2 = Signal()  # base sqrt(2) codes for this row
        tulq = Signal()  # TULQ levels for this row (then sqrt2 is held 0: the log ROM's sections are one-hot)
        tulq_sqrt2 = Signal()  # ... with the log region in half steps
        knee, step_bits, grid_bits = Signal.like(self.knee), Signal.like(self.step_bits), Signal.like(self.grid_bits)
        with m.FSM():
            with m.State("INPUT"):
                m.d.comb += [self.i_ready.eq(1), wr.addr.eq(ptr), wr.en.eq(fire)]
                for lane in range(lanes):
                    m.d.comb += [wr.data[lane].t.eq(self.i_t[lane]), wr.data[lane].mask.eq(self.i_mask[lane])]
                with m.If(fire):  # pass 1: store the row; its max leaves the max tree MAX_TREE_STAGES later
                    m.d.sync += [ptr.eq(ptr + 1), first_beat.eq(0), sqrt2.eq(self.sqrt2 & ~self.tulq),
                                 tulq.eq(self.tulq), tulq_sqrt2.eq(self.sqrt2 & self.tulq), knee.eq(self.knee),
                                 step_bits.eq(self.step_bits), grid_bits.eq(self.grid_bits)]
                    with m.If(self.i_last):
                        m.d.sync += [n_beats.eq(ptr + 1), ptr.eq(0), count.eq(0)]
                        m.next = "MAX"
            with m.State("MAX"):  # the last beat's max goes into the running max
                m.d.sync += count.eq(count + 1)
                with m.If(count == MAX_TREE_STAGES - 2):
                    m.next = "EXP"
            with m.State("EXP"):  # pass 2: issue the reads; each beat's exp is summed EXP_STAGES later
                m.d.comb += rd.addr.eq(ptr)
                m.d.sync += [ptr.eq(ptr + 1), exp_data.eq(1), exp_first.eq(ptr == 0)]
                with m.If(ptr + 1 == n_beats):
                    m.d.sync += [ptr.eq(0), count.eq(0)]
                    m.next = "GAP"
            with m.State("GAP"):  # the sum and its log2 finish; the padding to the configured latency
                m.d.sync += count.eq(count + 1)
                with m.If(count == gap - 1):
                    m.next = "CODE"
            with m.State("CODE"):  # pass 3: issue the reads; codes leave CODE_STAGES after a read
                m.d.comb += rd.addr.eq(ptr)
                m.d.sync += [ptr.eq(ptr + 1), code_data.eq(1), code_last.eq(ptr + 1 == n_beats)]
                with m.If(ptr + 1 == n_beats):
                    m.d.sync += [ptr.eq(0), count.eq(0)]
                    m.next = "TAIL"
            with m.State("TAIL"):  # the last codes (or levels) go through; the next row may start after this
                m.d.sync += count.eq(count + 1)
                with m.If(count == Mux(tulq, CODE_STAGES + TULQ_STAGES - 1, CODE_STAGES - 1)):
                    m.d.sync += first_beat.eq(1)
                    m.next = "INPUT"

        # the input pass: the max over the beat's positions that take part, then the running max of the row
        most_negative = -(1 << (self.in_bits - 1))
        cands = [Mux(self.i_mask[lane], self.i_t[lane], most_negative) for lane in range(lanes)]
        beat_max = tree(m, cands, MAX_TREE_STAGES, "beat_max", op=_max, arity=4)
        max_valid = delay(m, fire, MAX_TREE_STAGES, "max_valid")
        max_first = delay(m, fire & first_beat, MAX_TREE_STAGES, "max_first")
        with m.If(max_valid & (max_first | _lt(mx, beat_max))):
            m.d.sync += mx.eq(beat_max)

        # after a read (either pass): d = max - t, its exp ROM entry and shift; d (doubled for sqrt2) for a code
        code_d = []
        code_mask = []
        exps = []
        for lane in range(lanes):
            elem = rd.data[lane]
            d = Signal(unsigned(self.in_bits + 1), name=f"d_{lane}")
            m.d.comb += d.eq(mx - elem.t)
            port = exp_rom.read_port(domain="comb")
            m.d.comb += port.addr.eq(d[:fb])
            entry = Signal(unsigned(self.exp_bits + 1), name=f"exp_entry_{lane}")
            shift = Signal(range(self.exp_bits + 1), name=f"exp_shift_{lane}")
            kill = Signal(name=f"exp_kill_{lane}")
            cd = Signal(unsigned(self.in_bits + 2), name=f"code_d_{lane}")
            cm = Signal(name=f"code_mask_{lane}")
            m.d.sync += [entry.eq(port.data), shift.eq(d[fb:]), kill.eq(~elem.mask | _above(d[fb:], self.exp_bits)),
                         cd.eq(Mux(sqrt2, d << 1, d)), cm.eq(elem.mask)]
            e = Signal(unsigned(self.exp_bits + 1), name=f"exp_e_{lane}")
            m.d.sync += e.eq(Mux(kill, 0, entry >> shift))
            exps.append(e)
            code_d.append(cd)
            code_mask.append(cm)

        # the exp pass: an adder tree over the lanes, then the row's sum
        beat_sum = tree(m, exps, ADD_TREE_STAGES, "beat_sum")
        sum_valid = delay(m, exp_data, EXP_STAGES - 1, "sum_valid")
        sum_first = delay(m, exp_first, EXP_STAGES - 1, "sum_first")
        with m.If(sum_valid):
            m.d.sync += total.eq(Mux(sum_first, 0, total) + beat_sum)

        # log2 of the sum: leading one p and the log_bits below it, L = p*2**frac_bits + LOG[idx]. A row with a
        # position that takes part sums at least EXP[0] = 2**exp_bits, so p >= exp_bits (an all-masked row
        # sums 0: its codes are all zero whatever L is); the code offset is L - exp_bits*2**frac_bits + half
        w, lo = self.sum_bits, self.exp_bits
        lead = Signal(range(w - lo), name="lead")  # p - exp_bits
        idx = Signal(self.log_bits)
        m.d.sync += [lead.eq(0), idx.eq(0)]
        for bit in range(lo, w):  # the highest set bit wins
            with m.If(total[bit]):
                m.d.sync += [lead.eq(bit - lo), idx.eq((total << self.log_bits)[bit:bit + self.log_bits])]
        log_port = log_rom.read_port(domain="comb")
        m.d.comb += log_port.addr.eq(Cat(idx, sqrt2, tulq))
        code_offset = Signal(range((((w - lo) << fb) + (1 << (fb + 1))) * 2 + half), name="code_offset")
        m.d.sync += code_offset.eq(Mux(sqrt2, lead << (fb + 1), lead << fb) + log_port.data)  # sqrt2: twice -log2(p)

        # TULQ's row constants, from the fields held since the input pass. One shifter makes every level:
        # * uniform: ((EXP[f] >> w) + 2**(rs-1)) >> rs << (grid_bits - step_bits), rs = exp_bits - step_bits, f
        #   and w = l >> frac_bits < knee the fraction and whole part of l, is ((EXP[f] << pre) + 2**(w + rs - 1
        #   + pre)) >> (w + exp_bits + pre - grid_bits) with its low grid_bits - step_bits bits cleared (pre: so
        #   that the shift is to the right whatever exp_bits);
        # * log: with r = j + grid_top - grid_bits (half steps: j//2 for j), grid_top = MAX_TULQ_GRID_BITS, a
        #   power of two 2**(grid_bits - j) is 2**grid_top >> r, 0 past r = grid_top; an odd half step (181 *
        #   2**(grid_bits - j//2) + 128) >> 8 is ((181 << (grid_top - 8)) + 2**(r-1)) >> r (for r = 0 exactly
        #   181 << (grid_top - 8)), 0 from r = grid_top on. r comes from one adder on l: (l + half + ((grid_top -
        #   grid_bits) << frac_bits)) >> frac_bits, or (2 l + half + ((grid_top - grid_bits) << (frac_bits+1)))
        #   >> (frac_bits+1), its bit frac_bits the odd half step
        grid_top = widths.MAX_TULQ_GRID_BITS
        pre = max(0, grid_top - self.exp_bits)
        round_at = Signal(range(self.exp_bits + pre), name="tulq_round_at")  # the rounding bit at w = 0
        shift_at = Signal(range(self.exp_bits + pre + 1), name="tulq_shift_at")  # the shift at w = 0
        step_mask = Signal(self.level_bits, name="tulq_step_mask")  # the bits of a uniform step and above
        r_add = Signal(range(half + (grid_top << (fb + 1)) + 1), name="tulq_r_add")
        m.d.sync += [round_at.eq(self.exp_bits - 1 + pre - step_bits), shift_at.eq(self.exp_bits + pre - grid_bits),
                     step_mask.eq(Cat(*[grid_bits - step_bits <= i for i in range(self.level_bits)])),
                     r_add.eq(Mux(tulq_sqrt2, (grid_top - grid_bits) << (fb + 1), (grid_top - grid_bits) << fb) + half)]

        # the code pass: q = (offset + d) >> frac_bits, clamped to the zero code (valid positions: >= 0); TULQ:
        # the same sum (its offset without the half) is l, and a level follows TULQ_STAGES later
        q_out = Signal(data.ArrayLayout(unsigned(self.code_bits), lanes))
        y_out = Signal(data.ArrayLayout(unsigned(self.level_bits), lanes))
        kb = len(knee)
        odd_base = intops.SQRT_HALF_Q8 << (grid_top - 8)
        for lane in range(lanes):
            sum_d = code_offset + code_d[lane]
            raw = sum_d >> fb
            m.d.sync += q_out[lane].eq(Mux(~code_mask[lane] | _above(raw, zero_code), zero_code, raw[:self.code_bits]))
            ell = Signal(len(sum_d), name=f"tulq_l_{lane}")
            m.d.sync += ell.eq(sum_d)
            # the fraction's exp entry, the uniform region, where its level rounds and how far it shifts (w
            # below knee <= max_step where they count); the log level's r and odd half step
            whole = ell[fb:]
            port = tulq_rom.read_port(domain="comb")
            m.d.comb += port.addr.eq(ell[:fb])
            entry = Signal(unsigned(self.exp_bits + 1), name=f"tulq_entry_{lane}")
            uniform = Signal(name=f"tulq_uniform_{lane}")
            round_pos = Signal.like(round_at, name=f"tulq_round_pos_{lane}")
            shift_pos = Signal(range(self.exp_bits + pre), name=f"tulq_shift_pos_{lane}")
            log_sum = Mux(tulq_sqrt2, ell << 1, ell) + r_add
            r = Signal(len(log_sum) - fb, name=f"tulq_r_{lane}")
            odd = Signal(name=f"tulq_odd_{lane}")
            m.d.sync += [entry.eq(port.data), uniform.eq(~whole[kb:].any() & (whole[:kb] < knee)),
                         round_pos.eq(whole[:kb] + round_at), shift_pos.eq(whole[:kb] + shift_at),
                         r.eq(Mux(tulq_sqrt2, log_sum[fb + 1:], log_sum[fb:])), odd.eq(tulq_sqrt2 & log_sum[fb])]
            # the shifter's operand (with its rounding bit) and amount; the levels past the grid. Two adders:
            # one adding a picked rounding bit to a picked base took some 150 LUT4 a lane more (yosys 0.23, ABC)
            operand = Signal(max(self.exp_bits + 1 + pre, self.level_bits), name=f"tulq_operand_{lane}")
            amount = Signal.like(shift_pos, name=f"tulq_amount_{lane}")
            past = Signal(name=f"tulq_past_{lane}")
            rounded = (entry << pre) + (1 << round_pos)
            half_step = odd_base + ((1 << r[:len(amount)]) >> 1)
            m.d.sync += [operand.eq(Mux(uniform, rounded, Mux(odd, half_step, 1 << grid_top))),
                         amount.eq(Mux(uniform, shift_pos, r)),
                         past.eq(~uniform & Mux(odd, _above(r, grid_top - 1), _above(r, grid_top)))]
            keep = delay(m, code_mask[lane], TULQ_STAGES, f"tulq_mask_{lane}")
            pick = delay(m, uniform, 1, f"tulq_pick_{lane}")
            level = (operand >> amount)[:self.level_bits] & Mux(pick, step_mask, (1 << self.level_bits) - 1)
            m.d.sync += y_out[lane].eq(Mux(keep & ~past, level, 0))
        code_valid = delay(m, code_data, CODE_STAGES, "code_valid")
        code_end = delay(m, code_last, CODE_STAGES, "code_last")
        # the levels' flags enter their delay line with the mode: a log2 row's last codes must not come out
        # again TULQ_STAGES later once the next row (taken on the cycle they appear) holds tulq
        tulq_valid = delay(m, code_valid & tulq, TULQ_STAGES, "tulq_valid")
        tulq_end = delay(m, code_end & tulq, TULQ_STAGES, "tulq_last")
        for lane in range(lanes):
            m.d.comb += self.o_q[lane].eq(Mux(tulq, y_out[lane], q_out[lane]))
        m.d.comb += [self.o_valid.eq(Mux(tulq, tulq_valid, code_valid)), self.o_last.eq(Mux(tulq, tulq_end, code_end))]
        return m
