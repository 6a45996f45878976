"""The log2 softmax unit: ``sim.intops.softmax_log2`` on one row at a time, ``lanes`` elements per cycle."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.common import check_int
from sim import intops, timing, widths
from sim.accel import softmax_params


class SoftmaxLog2(wiring.Component):
    """Softmax of a row of log2-unit scores, as ``code_bits`` log2 codes (``2**code_bits - 1``: zero).

    A row arrives as beats of ``lanes`` scores ``i_t`` with a per-position
    ``i_mask`` (1: takes part), the last beat flagged ``i_last``. Three passes
    over a row buffer: (1) the input pass keeps the running max; (2) the exp
    pass sums ``EXP[d mod 2**frac_bits] >> (d >> frac_bits)`` with
    ``d = max - t`` (a 2**frac_bits-entry ROM and a shifter); then ``log2`` of
    the sum (priority encoder, a 2**log_bits-entry ROM); (3) the code pass
    emits ``q = clamp((L - exp_bits*2**frac_bits + d + 2**(frac_bits-1)) >> frac_bits)``, or with
    ``sqrt2`` (held for the row) the half-step codes ``clamp((2*(L - ...) + 2**(frac_bits-1)) >> frac_bits)``.
    A row of B beats takes ``3*B + latency`` clock edges from its first beat
    in to its last code out (``sim.timing.softmax_row_cycles``), and the next
    row's first beat is taken on the cycle that last code appears.
    """

    #: the last exp beat summed, the sum's leading one registered, L registered
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
        elem = data.StructLayout({"t": signed(in_bits), "mask": 1})
        self._elem = elem
        super().__init__({
            "i_valid": In(1),
            "i_ready": Out(1),
            "i_t": In(data.ArrayLayout(signed(in_bits), lanes)),
            "i_mask": In(data.ArrayLayout(unsigned(1), lanes)),
            "i_last": In(1),
            "sqrt2": In(1),
            "o_valid": Out(1),
            "o_q": Out(data.ArrayLayout(unsigned(code_bits), lanes)),
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
        log_table = intops.log2_table(self.log_bits, fb).tolist()
        m.submodules.exp_rom = exp_rom = Memory(shape=unsigned(self.exp_bits + 1), depth=1 << fb, init=exp_table)
        m.submodules.log_rom = log_rom = Memory(shape=unsigned(fb + 1), depth=1 << self.log_bits, init=log_table)

        n_beats = Signal(range(self.depth + 1))
        ptr = Signal(range(self.depth + 1))
        pad = Signal(range(self.latency + 1))
        mx = Signal(signed(self.in_bits))
        total = Signal(self.sum_bits)
        exp_data = Signal()  # rd.data holds an exp-pass beat
        code_data = Signal()  # rd.data holds a code-pass beat
        code_last = Signal()
        fire = Signal()
        m.d.comb += fire.eq(self.i_valid & self.i_ready)
        m.d.sync += [exp_data.eq(0), code_data.eq(0), code_last.eq(0)]

        first_beat = Signal(init=1)
        sqrt2 = Signal()  # base sqrt(2) codes for this row
        # the max over the beat's positions that take part and the row so far: a tree of compare-selects
        most_negative = -(1 << (self.in_bits - 1))
        level = [Mux(first_beat, most_negative, mx)]
        for lane in range(lanes):
            cand = Signal(signed(self.in_bits), name=f"cand_{lane}")
            m.d.comb += cand.eq(Mux(self.i_mask[lane], self.i_t[lane], most_negative))
            level.append(cand)
        depth = 0
        while len(level) > 1:
            nxt = []
            for i in range(0, len(level) - 1, 2):
                a, b = level[i], level[i + 1]
                bigger = Signal(signed(self.in_bits), name=f"max_{depth}_{i // 2}")
                m.d.comb += bigger.eq(Mux(b > a, b, a))
                nxt.append(bigger)
            level = nxt + level[len(level) - len(level) % 2:]
            depth += 1
        row_max = level[0]
        with m.FSM():
            with m.State("INPUT"):
                m.d.comb += [self.i_ready.eq(1), wr.addr.eq(ptr), wr.en.eq(fire)]
                for lane in range(lanes):
                    m.d.comb += [wr.data[lane].t.eq(self.i_t[lane]), wr.data[lane].mask.eq(self.i_mask[lane])]
                with m.If(fire):  # pass 1: store the row, keep the max over the positions that take part
                    m.d.sync += [mx.eq(row_max), ptr.eq(ptr + 1), first_beat.eq(0), sqrt2.eq(self.sqrt2)]
                    with m.If(self.i_last):
                        m.d.sync += [n_beats.eq(ptr + 1), ptr.eq(0), total.eq(0)]
                        m.next = "EXP"
            with m.State("EXP"):  # pass 2: issue the reads; the data is summed a cycle later
                m.d.comb += rd.addr.eq(ptr)
                m.d.sync += [ptr.eq(ptr + 1), exp_data.eq(1)]
                with m.If(ptr + 1 == n_beats):
                    m.next = "SUM_LAST"
            with m.State("SUM_LAST"):  # the last exp beat is added to the sum
                m.next = "LOG"
            with m.State("LOG"):  # leading one and mantissa of the sum are registered
                m.d.sync += [ptr.eq(0), pad.eq(0)]
                m.next = "PAD" if self.latency > self.min_latency else "CODE"
            if self.latency > self.min_latency:
                with m.State("PAD"):  # the configured latency beyond the minimum
                    m.d.sync += pad.eq(pad + 1)
                    with m.If(pad == self.latency - self.min_latency - 1):
                        m.next = "CODE"
            with m.State("CODE"):  # pass 3: issue the reads; codes leave a cycle after the data
                m.d.comb += rd.addr.eq(ptr)
                m.d.sync += [ptr.eq(ptr + 1), code_data.eq(1), code_last.eq(ptr + 1 == n_beats)]
                with m.If(ptr + 1 == n_beats):
                    m.next = "TAIL"
            with m.State("TAIL"):  # the last codes are computed; the next row may start after this
                m.d.sync += [ptr.eq(0), first_beat.eq(1)]
                m.next = "INPUT"

        # the exp pass datapath
        beat_sum = 0
        for lane in range(lanes):
            elem = rd.data[lane]
            d = Signal(unsigned(self.in_bits + 1), name=f"exp_d_{lane}")
            m.d.comb += d.eq(mx - elem.t)
            port = exp_rom.read_port(domain="comb")
            m.d.comb += port.addr.eq(d[:fb])
            k = d[fb:]
            e = Signal(unsigned(self.exp_bits + 1), name=f"exp_e_{lane}")
            m.d.comb += e.eq(Mux(elem.mask & (k <= self.exp_bits), port.data >> k[:5], 0))
            beat_sum = beat_sum + e
        with m.If(exp_data):
            m.d.sync += total.eq(total + beat_sum)

        # log2 of the sum: leading one p and the log_bits below it, then L = p*2**frac_bits + LOG[idx]
        w = self.sum_bits
        s_eff = Mux(total == 0, 1, total)  # an all-masked row: sum 0, its codes are all zero anyway
        p = Signal(range(w), name="lead")
        for bit in range(w):
            with m.If(s_eff[bit]):
                m.d.comb += p.eq(bit)
        p_reg = Signal(range(w))
        idx_reg = Signal(self.log_bits)
        norm = Signal(w + self.log_bits)
        m.d.comb += norm.eq((s_eff << self.log_bits) >> p)  # leading one lands on bit log_bits
        m.d.sync += [p_reg.eq(p), idx_reg.eq(norm[:self.log_bits])]
        log_port = log_rom.read_port(domain="comb")
        m.d.comb += log_port.addr.eq(idx_reg)
        big_l = Signal(range((w << fb) + (1 << (fb + 1))))
        m.d.sync += big_l.eq((p_reg << fb) + log_port.data)

        # the code pass datapath
        q_out = Signal.like(self.o_q)
        half = 1 << (fb - 1)
        for lane in range(lanes):
            elem = rd.data[lane]
            raw = Signal(signed(w + fb + 3), name=f"code_raw_{lane}")
            log_p = big_l + (mx - elem.t) - (self.exp_bits << fb)  # -log2(p), frac_bits fractional bits
            m.d.comb += raw.eq((Mux(sqrt2, log_p << 1, log_p) + half) >> fb)  # half steps: twice -log2(p)
            q = Mux(~elem.mask | (raw > zero_code), zero_code, Mux(raw < 0, 0, raw[:self.code_bits]))
            m.d.sync += q_out[lane].eq(q)
        o_valid = Signal()
        o_last = Signal()
        m.d.sync += [o_valid.eq(code_data), o_last.eq(code_last)]
        m.d.comb += [self.o_q.eq(q_out), self.o_valid.eq(o_valid), self.o_last.eq(o_last)]
        return m
