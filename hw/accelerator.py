"""The accelerator: the units joined under one controller that runs a ``sim.isa`` instruction stream."""

from __future__ import annotations

import functools
import operator

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.common import ParameterError, SlicedMemory, replica
from hw.gelu import Gelu
from hw.layernorm import LayerNorm
from hw.mac_array import MacArray
from hw.requant import Requantizer
from hw.softmax import SoftmaxLog2
from hw.vector import VectorAdder
from sim import intops, isa, timing

ELEM_BITS = 32  #: an ABUF element
QUEUE = 3  #: words between the vector feed's reads and its unit: two in flight and one taken, so one a cycle
PC_BITS = 32
CYCLE_BITS = 48
#: gemm phases (``sim.isa.exec_cycles``): the first cycle, matmul's first tile into the transpose buffer,
#: the array's weight beats, its streamed rows, its drain (and matmul's next tile), the epilogue's last rows
SETUP, TRANS, LOAD, STREAM, DRAIN, TAIL = range(6)


def _index(enum: str, name: str) -> int:
    return isa.ENUMS[enum].index(name)


def field_views(ir: Value) -> dict[str, dict[str, Value]]:
    """Each op's fields as slices of the instruction register, from ``sim.isa``'s slot layout."""
    views = {}
    for op in isa.FORMATS:
        views[op] = {}
        for name, slot in isa._slots(op):
            bits = isa.SLOT_BITS * (2 if name in isa.WIDE else 1)
            views[op][name] = ir[slot * isa.SLOT_BITS:slot * isa.SLOT_BITS + bits]
    return views


def _sext(value: Value, bits: int = ELEM_BITS) -> Value:
    return Cat(value, *([value[-1]] * (bits - len(value))))


def _zext(value: Value, bits: int = ELEM_BITS) -> Value:
    return Cat(value, Const(0, bits - len(value))) if len(value) < bits else value[:bits]


class Accelerator(wiring.Component):
    """The MAC array, requantizer, GELU, softmax, LayerNorm and vector adder, the ABUF and WBUF, one
    memory port and the controller that runs ``sim.isa`` instructions from DRAM beat 0 on.

    Ports (``sim.isa``): ``start`` (taken while idle or done: fetch from beat 0), ``done``, the memory
    port ``mem_addr`` / ``mem_re`` / ``mem_we`` / ``mem_wdata`` / ``mem_rdata`` (one beat; read data the
    cycle after ``mem_re``), and for benches ``cycles``, ``retire`` and ``pc``. Each instruction takes
    exactly ``sim.isa.instr_cycles`` clock edges: ``retire`` is high on its last cycle, with ``cycles``
    the sum of ``instr_cycles`` over the instructions so far, this one included.

    The ABUF has two read ports (``a``: every stream, ``b``: add's second operand and the softmax key
    mask) and one write port; the WBUF one of each; both are built of block-RAM-wide slices
    (``hw.common.SlicedMemory``). Vector units take their input from a queue of registered reads and
    write through the write port; the gemm epilogue is requantizer [-> GELU] -> ABUF. Every ABUF write
    is registered.
    """

    def __init__(self, cfg):
        v = cfg.array.rows
        lanes = {"array.cols": cfg.array.cols, "requant.lanes": cfg.requant.lanes, "gelu.lanes": cfg.gelu.lanes,
                 "softmax.lanes": cfg.softmax.lanes, "layernorm.lanes": cfg.layernorm.lanes}
        for name, n in lanes.items():
            if n != v:
                self._MustUse__silence = True  # refused, so never elaborated
                raise ParameterError(f"Accelerator {cfg.name}: {name} = {n} must equal array.rows = {v} "
                                     "(the joined accelerator's vector width)")
        bb = cfg.dram_bytes_per_cycle
        if bb != int(bb) or bb < 1:
            raise ParameterError(f"Accelerator {cfg.name}: dram_bytes_per_cycle = {bb} must be a whole number of bytes")
        self.cfg = cfg
        self.v = v
        self.beat_bits = 8 * int(bb)
        self.instr_beats = isa.instr_beats(int(bb))
        self.abuf_depth = cfg.buffers.bytes("activation") // (4 * v)
        self.wbuf_depth = cfg.buffers.bytes("weight") * 8 // (v * cfg.array.weight_bits)
        self.digits = isa.max_digits(cfg)  # activation digits a streamed element may take
        self.w_digits = isa.max_weight_digits(cfg)  # weight digit planes a linear may take
        self.item_beats = {t: isa.beats(isa.load_item_bits(t, cfg), int(bb)) for t in isa.TARGETS}
        super().__init__({
            "start": In(1),
            "done": Out(1),
            "mem_addr": Out(32),
            "mem_re": Out(1),
            "mem_we": Out(1),
            "mem_wdata": Out(self.beat_bits),
            "mem_rdata": In(self.beat_bits),
            "cycles": Out(CYCLE_BITS),
            "retire": Out(1),
            "pc": Out(PC_BITS),
        })

    @classmethod
    def from_accel(cls, cfg) -> "Accelerator":
        """The accelerator of description ``cfg``: its units built with their ``from_accel``."""
        return cls(cfg)

    @property
    def params(self) -> dict:
        return {"v": self.v, "beat_bits": self.beat_bits, "abuf_depth": self.abuf_depth,
                "wbuf_depth": self.wbuf_depth, "digits": self.digits, "w_digits": self.w_digits}

    def elaborate(self, platform):
        m = Module()
        cfg, v = self.cfg, self.v
        u = _Units(m, cfg, isa.array_digits(cfg))
        word = data.ArrayLayout(signed(ELEM_BITS), v)
        abuf = SlicedMemory(m, "abuf", word, self.abuf_depth, reads=2)
        wbuf = SlicedMemory(m, "wbuf", data.ArrayLayout(signed(cfg.array.weight_bits), v), self.wbuf_depth, reads=1)
        p = _Named(ra=abuf.read[0], rb=abuf.read[1], wa=abuf.write, rw=wbuf.read[0], ww=wbuf.write)
        ir = Signal(self.instr_beats * self.beat_bits)
        f = field_views(ir)
        flag = {name: ir[8 + bit] for name, bit in isa.FLAGS.items()}
        c = _Control(m)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                self._on_start(m, c)
            with m.State("FETCH"):
                self._fetch(m, c, ir)
            with m.State("LOAD"):
                self._load(m, c, f["load"], u, p, active=fsm.ongoing("LOAD"))
                self._next_on_retire(m, c)
            with m.State("STORE"):
                self._store(m, c, f["store"], p)
                self._next_on_retire(m, c)
            with m.State("GEMM"):
                self._gemm(m, c, f["gemm"], flag, u, p)
                self._next_on_retire(m, c)
            with m.State("VECTOR"):
                self._vector_feed(m, c, f["vector"], flag, u, p)
                self._next_on_retire(m, c)
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                self._on_start(m, c)
        gemm, vector = fsm.ongoing("GEMM"), fsm.ongoing("VECTOR")
        self._vector_fields(m, f["vector"], flag, u)
        self._epilogue(m, c, f, flag, u, gemm, vector)
        self._table_writes(m, c, u, p)
        self._write_back(m, c, f, flag, u, p, gemm, vector, in_load=fsm.ongoing("LOAD"),
                         op_gemm=ir[:8] == isa.OPCODES["gemm"])
        with m.If(fsm.ongoing("FETCH")):
            m.d.sync += [r.eq(0) for r in c.exec_regs]
        running = ~(fsm.ongoing("IDLE") | fsm.ongoing("DONE"))
        with m.If(running):
            m.d.sync += c.cycles.eq(c.cycles + 1)
        m.d.comb += [self.cycles.eq(c.cycles), self.pc.eq(c.pc), self.retire.eq(c.retire)]
        return m

    # ---------------------------------------------------------------- the instruction sequence
    def _on_start(self, m, c):
        with m.If(self.start):
            m.d.sync += [c.pc.eq(0), c.fetch_addr.eq(0), c.fbeat.eq(0), c.cycles.eq(1)]
            m.next = "FETCH"

    def _next_on_retire(self, m, c):
        with m.If(c.retire):
            m.d.sync += [c.pc.eq(c.pc + 1), c.fetch_addr.eq(c.fetch_addr + self.instr_beats), c.fbeat.eq(0)]
            m.next = "FETCH"

    def _fetch(self, m, c, ir):
        """Beats ``pc * instr_beats`` on, one a cycle; the last returns on the fetch's last cycle, which
        also dispatches on the opcode (beat 0's low byte), or retires ``end``."""
        n, bb = self.instr_beats, self.beat_bits
        m.d.comb += [self.mem_re.eq(c.fbeat < n), self.mem_addr.eq(c.fetch_addr + c.fbeat)]
        m.d.sync += c.fbeat.eq(c.fbeat + 1)
        for b in range(n):
            with m.If(c.fbeat == b + 1):
                m.d.sync += ir[b * bb:(b + 1) * bb].eq(self.mem_rdata)
        opcode = self.mem_rdata[:8] if n == 1 else ir[:8]
        with m.If(c.fbeat == n):
            with m.Switch(opcode):
                for op, state in (("load", "LOAD"), ("store", "STORE"), ("gemm", "GEMM"), ("vector", "VECTOR")):
                    with m.Case(isa.OPCODES[op]):
                        m.next = state
                with m.Default():  # end (and any unknown opcode) stops the machine
                    m.d.comb += c.retire.eq(1)
                    m.next = "DONE"

    # ---------------------------------------------------------------- load and store
    def _load(self, m, c, f, u, p, active):
        """DRAM -> ABUF / WBUF / a table: beats issued one a cycle; an item is written on the cycle its
        last beat returns."""
        bb = self.beat_bits
        most = max(self.item_beats.values())
        target = f["target"]
        nb = Signal(range(most + 1))
        with m.Switch(target):
            for t, n in self.item_beats.items():
                with m.Case(_index("target", t)):
                    m.d.comb += nb.eq(n)
        issued, iss_beat, iss_item, iss_done = c.reg(32), c.reg(range(most)), c.reg(16), c.reg(1)
        with m.If(~iss_done):
            m.d.comb += [self.mem_re.eq(1), self.mem_addr.eq(f["dram"] + issued)]
            m.d.sync += [issued.eq(issued + 1), iss_beat.eq(iss_beat + 1)]
            with m.If(iss_beat == nb - 1):
                m.d.sync += [iss_beat.eq(0), iss_item.eq(iss_item + 1)]
                with m.If(iss_item == f["count"] - 1):
                    m.d.sync += iss_done.eq(1)
        arrive, a_beat, a_item = c.reg(1), c.reg(range(most)), c.reg(16)
        m.d.sync += arrive.eq(~iss_done)
        asm = Signal(most * bb)
        item = Signal(most * bb)  # the item with the beat arriving now in place
        m.d.comb += item.eq(asm)
        for b in range(most):
            with m.If(a_beat == b):
                m.d.comb += item[b * bb:(b + 1) * bb].eq(self.mem_rdata)
        write = Signal()
        with m.If(arrive):
            m.d.sync += [asm.eq(item), a_beat.eq(a_beat + 1)]
            with m.If(a_beat == nb - 1):
                m.d.sync += [a_beat.eq(0), a_item.eq(a_item + 1)]
                m.d.comb += write.eq(1)
                with m.If(a_item == f["count"] - 1):
                    m.d.comb += c.retire.eq(1)
        addr = f["addr"] + a_item
        en = {t: write & (target == _index("target", t)) for t in isa.TARGETS}
        c.load_abuf = (en["abuf"], addr, item[:ELEM_BITS * self.v])  # registered with the unit results
        c.load_item = (en, addr, item)

    def _table_writes(self, m, c, u, p):
        """A loaded item to WBUF or a table, the cycle after its last beat arrives, from registers (set outside
        the state machine, so they hold no write past that cycle): the item no longer fans out from the beat
        mux to every block RAM it could go to. A load retires on its last beat as before; its last write lands
        in the next fetch, before anything reads it. A table entry's bits (``sim.isa``): requantizer ``M,
        shift, zero point``; GELU one entry; LayerNorm per lane ``gamma, beta, in_shift`` (lane 0 in the low
        bits)."""
        en, addr, item = c.load_item
        t_addr = Signal.like(addr, name="load_waddr", reset_less=True)
        t_item = Signal(len(item), name="load_item", reset_less=True)
        m.d.sync += [t_addr.eq(addr), t_item.eq(item)]
        w = {t: _Named(en=Signal(name=f"{t}_we"), addr=t_addr, item=t_item) for t in isa.TARGETS if t != "abuf"}
        for t, r in w.items():
            m.d.sync += r.en.eq(en[t])
        m.d.comb += [p.ww.en.eq(w["wbuf"].en), p.ww.addr.eq(w["wbuf"].addr), Value.cast(p.ww.data).eq(w["wbuf"].item)]
        rq, gelu, ln = u.rq, u.gelu, u.ln
        mb, sb = rq.mult_bits, rq.shift_bits
        r = w["requant"]
        m.d.comb += [rq.tbl_we.eq(r.en), rq.tbl_addr.eq(r.addr), rq.tbl_m.eq(r.item[:mb]),
                     rq.tbl_shift.eq(r.item[mb:mb + sb]), rq.tbl_zp.eq(r.item[mb + sb:mb + sb + rq.out_bits + 1])]
        r = w["gelu"]
        m.d.comb += [gelu.tbl_we.eq(r.en), gelu.tbl_addr.eq(r.addr), gelu.tbl_data.eq(r.item[:gelu.out_bits])]
        g, b = ln.gamma_bits, ln.beta_bits
        lane_bits = g + b + 2
        r = w["layernorm"]
        m.d.comb += [ln.tbl_we.eq(r.en), ln.tbl_addr.eq(r.addr)]
        for lane in range(ln.lanes):
            o = lane * lane_bits
            m.d.comb += [ln.tbl_gamma[lane].eq(r.item[o:o + g]), ln.tbl_beta[lane].eq(r.item[o + g:o + g + b]),
                         ln.tbl_in_shift[lane].eq(r.item[o + g + b:o + lane_bits])]

    def _store(self, m, c, f, p):
        """ABUF -> DRAM: the first cycle reads word 0; then one beat a cycle, each word read on its
        predecessor's last beat."""
        bb, per_word = self.beat_bits, isa.beats(ELEM_BITS * self.v, self.beat_bits // 8)
        primed, beat, wrd, ptr = c.reg(1), c.reg(range(per_word)), c.reg(16), c.reg(32)
        m.d.sync += primed.eq(1)
        last_beat = beat == per_word - 1
        m.d.comb += p.ra.addr.eq(f["addr"] + wrd + (primed & last_beat))
        bits = Cat(Value.cast(p.ra.data), Const(0, per_word * bb - ELEM_BITS * self.v))
        with m.If(primed):
            m.d.comb += [self.mem_we.eq(1), self.mem_addr.eq(f["dram"] + ptr),
                         self.mem_wdata.eq(bits.word_select(beat, bb))]
            m.d.sync += [ptr.eq(ptr + 1), beat.eq(beat + 1)]
            with m.If(last_beat):
                m.d.sync += [beat.eq(0), wrd.eq(wrd + 1)]
                with m.If(wrd == f["count"] - 1):
                    m.d.comb += c.retire.eq(1)

    # ---------------------------------------------------------------- vector: the read side
    def _vector_feed(self, m, c, f, flag, u, p):
        """One word a cycle from ABUF port a (and port b), row-major, through a queue of :data:`QUEUE`
        registered words: a read's data is written into the queue the cycle after its read, and the unit
        takes the word at the queue's head, so a block RAM's clock-to-output never shares a cycle with a
        unit's first stage. Reads are issued while the queue has room for them (the reads in flight
        counted), from registers alone; while softmax or LayerNorm holds a row's next beat the queue fills,
        and the word after is at its head when the unit takes it. The unit sees its first word on the
        third cycle (``sim.isa.VECTOR_FEED_CYCLES``), then one a cycle. Each port's address is its base
        plus a running offset (``row * stride + w`` kept by adds: no multiplier before a block RAM)."""
        v = self.v
        unit = f["unit"]
        is_ = {name: unit == _index("unit", name) for name in isa.VECTOR_UNITS}
        # the read side: the word read next, (rrow, rw), and its offset from each port's base
        rdone, rrow, rw = c.reg(1), c.reg(16), c.reg(16)
        owed = c.reg(range(QUEUE + 1))  # words read and not yet taken by the unit
        issue = ~rdone & (owed != QUEUE)
        r_last_w = rw == f["words"] - 1
        for port, base, stride in ((p.ra, f["a_base"], f["a_stride"]), (p.rb, f["b_base"], f["b_stride"])):
            row_at, at = c.reg(len(port.addr)), c.reg(len(port.addr))  # rrow * stride, rrow * stride + rw
            below = row_at + stride  # the next row's offset
            m.d.comb += port.addr.eq(base + at)
            with m.If(issue):
                m.d.sync += [row_at.eq(Mux(r_last_w, below, row_at)), at.eq(Mux(r_last_w, below, at + 1))]
        with m.If(issue):
            m.d.sync += [rrow.eq(Mux(r_last_w, rrow + 1, rrow)), rw.eq(Mux(r_last_w, 0, rw + 1))]
            with m.If(r_last_w & (rrow == f["rows"] - 1)):
                m.d.sync += rdone.eq(1)
        # the queue: data registers (no reset: a word counts only once `held` says so), and beside each word
        # the softmax mask of its lanes: inside the row, and with the mask flag a nonzero key mask word
        arriving, wp, rp, held = c.reg(1), c.reg(range(QUEUE)), c.reg(range(QUEUE)), c.reg(range(QUEUE + 1))
        in_row = Signal(v)  # the lanes of the word arriving that lie inside its row
        m.d.sync += [arriving.eq(issue), in_row.eq(Cat(*[rw * v + lane < f["n_valid"] for lane in range(v)]))]
        word = data.ArrayLayout(signed(ELEM_BITS), v)
        qa = [Signal(word, name=f"queue_a_{i}", reset_less=True) for i in range(QUEUE)]
        qb = [Signal(word, name=f"queue_b_{i}", reset_less=True) for i in range(QUEUE)]
        qm = [Signal(v, name=f"queue_mask_{i}", reset_less=True) for i in range(QUEUE)]
        keys = Cat(*[in_row[lane] & (~flag["mask"] | p.rb.data[lane].any()) for lane in range(v)])
        with m.If(arriving):
            for i in range(QUEUE):
                with m.If(wp == i):
                    m.d.sync += [qa[i].eq(p.ra.data), qb[i].eq(p.rb.data), qm[i].eq(keys)]
            m.d.sync += wp.eq(Mux(wp == QUEUE - 1, 0, wp + 1))
        ready = Mux(is_["layernorm"], u.ln.i_ready, Mux(is_["softmax"], u.sm.i_ready, 1))
        present = held != 0
        fire = present & ready
        m.d.sync += [held.eq(held + arriving - fire), owed.eq(owed + issue - fire)]
        with m.If(fire):
            m.d.sync += rp.eq(Mux(rp == QUEUE - 1, 0, rp + 1))
        a = Array(Value.cast(q) for q in qa)[rp]
        b = Array(Value.cast(q) for q in qb)[rp]
        a = data.View(word, a)
        b = data.View(word, b)
        mask = Signal(v)
        m.d.comb += mask.eq(Array(qm)[rp])
        # the unit's side: the word taken next, (row, w)
        row, w = c.reg(16), c.reg(16)
        last_w = w == f["words"] - 1
        with m.If(fire):
            m.d.sync += [row.eq(Mux(last_w, row + 1, row)), w.eq(Mux(last_w, 0, w + 1))]
        m.d.comb += [c.vec_fire_rq.eq(fire & is_["requant"]), c.vec_fire_gelu.eq(fire & is_["gelu"]), c.vec_col.eq(w)]
        add, ln, sm = u.add, u.ln, u.sm
        m.d.comb += [add.i_valid.eq(fire & (is_["add"] | is_["add_const"])),
                     ln.i_valid.eq(present & is_["layernorm"]), ln.i_last.eq(last_w),
                     sm.i_valid.eq(present & is_["softmax"]), sm.i_last.eq(last_w)]
        for lane in range(v):
            m.d.comb += [add.i_a[lane].eq(a[lane][:add.in_bits]), add.i_b[lane].eq(b[lane][:add.in_bits]),
                         ln.i_x[lane].eq(a[lane][:ln.in_bits]), sm.i_t[lane].eq(a[lane][:sm.in_bits]),
                         sm.i_mask[lane].eq(mask[lane])]
        c.vec_a = a

    def _vector_fields(self, m, f, flag, u):
        """The vector units' fields, held for the instruction: straight from the instruction register, in
        every state (a field set only in the VECTOR state would pass through the state decode)."""
        add, ln, sm = u.add, u.ln, u.sm
        m.d.comb += [add.const.eq(f["unit"] == _index("unit", "add_const")), add.ma.eq(f["ma"]), add.mb.eq(f["mb"]),
                     add.shift.eq(f["shift"]), add.out_width.eq(f["out_bits"]),
                     ln.n.eq(f["n_valid"]), ln.shift.eq(f["shift"]), ln.out_width.eq(f["out_bits"]),
                     sm.sqrt2.eq(flag["sqrt2"]), sm.tulq.eq(flag["tulq"]), sm.knee.eq(f["knee"]),
                     sm.step_bits.eq(f["step_bits"]), sm.grid_bits.eq(f["grid_bits"])]

    # ---------------------------------------------------------------- gemm: the array's feed
    def _gemm(self, m, c, f, flag, u, p):
        """Folds ``(j, i, d)`` in ``sim.isa`` order, in lockstep with the array's load / stream / drain;
        every read is issued the cycle before its data is presented. Addresses are bases plus offsets
        kept by adds as the counters step (``o``): no multiplier on an address."""
        v, arr = self.v, u.arr
        ab, wb = arr.act_bits, arr.weight_bits
        mode = f["mode"]
        lin, mm, lg, kn = (mode == _index("mode", x) for x in isa.GEMM_MODES)
        bal = mm | kn  # streamed in balanced signed digits (an activation x activation product)
        phase, k = c.reg(range(TAIL + 1)), c.reg(16)
        fj, fi, fd, final = c.reg(16), c.reg(16), c.reg(range(self.digits)), c.reg(1)
        fe = c.reg(range(self.w_digits))
        first = (fi == 0) & (fd == 0) & (fe == 0)
        last = (fi == f["kf"] - 1) & (fd == f["digits"] - 1) & (fe == f["w_digits"] - 1)
        aw, ww = len(p.ra.addr), len(p.rw.addr)
        o = _Named(tile=c.reg(ww), fi_rows=c.reg(aw), fj_rows=c.reg(aw), beat=c.reg(aw), row=c.reg(aw),
                     step=c.reg(aw))
        # o.tile = (fj * kf + fi) * w_digits + fe; o.fi_rows = fi * V * s_stride; o.fj_rows = fj * V * s_stride;
        # o.beat = (k + 1) * s_stride in LOAD; o.row = (k + 1) * x_stride in STREAM;
        # o.step = step * s_stride in a transpose window
        m.d.sync += o.beat.eq(Mux(phase == LOAD, o.beat + f["s_stride"], f["s_stride"]))

        def w_addr(r):  # linear: WBUF word of stationary beat r, s_base + ((fj * kf + fi) * w_digits + fe) * V + r
            return f["s_base"] + o.tile * v + r

        def log2_addr(beat_offset):  # log2: ABUF word of a stationary beat, s_base + (fi * V + r) * s_stride + fj
            return f["s_base"] + o.fi_rows + beat_offset + fj

        def prefetch():
            m.d.comb += [p.rw.addr.eq(w_addr(0)), p.ra.addr.eq(log2_addr(0))]

        tb = [[Signal(signed(wb), name=f"tb_{col}_{r}") for r in range(v)] for col in range(v)]
        # an activation x activation operand enters as balanced signed digits (sim.intops.balanced_digit): the
        # digit's field of x + C, its top bit inverted; C depends on the operand's digit count
        x_off = Array(Const(intops.balance_offset(n, ab), self.digits * ab)
                      for n in range(self.digits + 1))[f["digits"]]
        s_off = Array(Const(intops.balance_offset(n, wb), self.w_digits * wb)
                      for n in range(self.w_digits + 1))[f["w_digits"]]

        def s_digit(value):  # digit fe of a stationary element read from ABUF (matmul, log2)
            width = self.w_digits * wb
            return ((value[:width] + s_off)[:width].word_select(fe, wb) ^ (1 << (wb - 1))).as_signed()

        def transpose(step):  # matmul, step 0..V: read tile word `step`, keep word `step - 1` (its lanes: beat r)
            m.d.comb += p.ra.addr.eq(f["s_base"] + o.fj_rows + o.step + fi)  # s_base + (fj V + step) s_stride + fi
            m.d.sync += o.step.eq(o.step + f["s_stride"])
            for col in range(v):
                with m.If(step == col + 1):
                    m.d.sync += [tb[col][r].eq(s_digit(p.ra.data[r])) for r in range(v)]

        m.d.sync += o.step.eq(0)  # outside a transpose window

        with m.Switch(phase):
            with m.Case(SETUP):
                prefetch()
                m.d.sync += phase.eq(Mux(mm, TRANS, LOAD))
            with m.Case(TRANS):  # matmul's first tile: word c of the tile is column c of the stationary beats
                transpose(k)
                m.d.sync += k.eq(k + 1)
                with m.If(k == v):
                    m.d.sync += [k.eq(0), phase.eq(LOAD)]
            with m.Case(LOAD):
                self._stationary_beat(m, f, flag, arr, p, tb, k, fi, fj, fd + fe, first, last, lin, mm, lg,
                                      s_digit)
                m.d.comb += [p.rw.addr.eq(w_addr(k + 1)),
                             p.ra.addr.eq(Mux(k == v - 1, f["x_base"] + fi,
                                              Mux(lg | kn, log2_addr(o.beat), f["bias_base"] + fj)))]
                m.d.sync += [k.eq(k + 1), o.row.eq(f["x_stride"])]
                with m.If(k == v - 1):
                    m.d.sync += [k.eq(0), phase.eq(STREAM)]
            with m.Case(STREAM):
                ud = f["unsigned_digits"].bit_select(fd, 1)
                m.d.comb += [arr.x_valid.eq(1), p.ra.addr.eq(f["x_base"] + o.row + fi)]  # row k + 1
                m.d.sync += o.row.eq(o.row + f["x_stride"])
                width = self.digits * ab
                for r in range(v):
                    x = p.ra.data[r].as_unsigned()[:width]
                    digit = Mux(bal, (x + x_off)[:width], x).word_select(fd, ab)
                    m.d.comb += arr.x_vec[r].eq(digit ^ ((ud | bal) << (ab - 1)))
                m.d.sync += k.eq(k + 1)
                with m.If(k == f["m"] - 1):
                    m.d.sync += [k.eq(0), phase.eq(DRAIN)]
                    self._next_fold(m, f, fj, fi, fe, fd, final, o)
            with m.Case(DRAIN):  # port a is free: matmul reads the next tile in the last V + 1 cycles
                drain = timing.mac_drain_cycles(v, v)
                with m.If(mm & (k >= drain - v - 1)):
                    transpose(k - (drain - v - 1))
                m.d.sync += k.eq(k + 1)
                with m.If(k == drain - 1):
                    prefetch()
                    m.d.sync += [k.eq(0), phase.eq(Mux(final, TAIL, LOAD))]

    def _stationary_beat(self, m, f, flag, arr, p, tb, r, fi, fj, shift, first, last, lin, mm, lg, s_digit):
        """Weight beat ``r`` of the fold: a WBUF word (linear), a transpose-buffer column (matmul) or an
        ABUF word (log2, matmul_kn); rows / lanes past ``s_valid`` are 0. The bias word is read during the beats.
        ``shift``: the fold's activation digit plus its weight digit, the array's partial-sum shift."""
        v, wb = self.v, arr.weight_bits
        m.d.comb += [arr.w_valid.eq(1), arr.w_first.eq(first), arr.w_last.eq(last), arr.m.eq(f["m"]),
                     arr.w_log2.eq(lg), arr.w_sqrt2.eq(flag["sqrt2"])]
        if arr.digits > 1:
            m.d.comb += arr.w_digit.eq(shift)
        for col in range(v):
            mm_lane = Mux(fj * v + col < f["s_valid"], Array(tb[col])[r], 0)
            log2_lane = Mux(fi * v + r < f["s_valid"], s_digit(p.ra.data[col]), 0)
            m.d.comb += arr.w_row[col].eq(Mux(lin, p.rw.data[col], Mux(mm, mm_lane, log2_lane)))
            m.d.comb += arr.bias[col].eq(Mux(flag["bias"] & first, p.ra.data[col], 0))

    def _next_fold(self, m, f, fj, fi, fe, fd, final, o):
        """``d`` innermost, then ``e``, then ``i``, then ``j``; after the last fold the gemm drains to its
        tail. Every (i, e) step moves to the next weight plane, so ``o.tile`` counts them."""
        rows = f["s_stride"] * self.v
        m.d.sync += fd.eq(fd + 1)
        with m.If(fd == f["digits"] - 1):
            m.d.sync += [fd.eq(0), fe.eq(fe + 1), o.tile.eq(o.tile + 1)]
            with m.If(fe == f["w_digits"] - 1):
                m.d.sync += [fe.eq(0), fi.eq(fi + 1), o.fi_rows.eq(o.fi_rows + rows)]
                with m.If(fi == f["kf"] - 1):
                    m.d.sync += [fi.eq(0), fj.eq(fj + 1), o.fi_rows.eq(0), o.fj_rows.eq(o.fj_rows + rows)]
                    with m.If(fj == f["nf"] - 1):
                        m.d.sync += final.eq(1)

    # ---------------------------------------------------------------- requantizer and GELU
    def _epilogue(self, m, c, f, flag, u, gemm, vector):
        """The requantizer and GELU: fed by the array's drained rows (gemm) or by ABUF port a (vector);
        lane ``c`` of column block ``j`` (word ``w``) reads requantizer entry ``ch_base + j V + c``."""
        v, arr, rq, gelu = self.v, u.arr, u.rq, u.gelu
        g, vf = f["gemm"], f["vector"]
        irow, icol = c.reg(16), c.reg(16)
        with m.If(gemm & arr.o_valid):
            m.d.sync += irow.eq(irow + 1)
            with m.If(irow == g["m"] - 1):
                m.d.sync += [irow.eq(0), icol.eq(icol + 1)]
        col = Mux(gemm, icol, c.vec_col)
        ch_base = Mux(gemm, g["ch_base"], vf["ch_base"])
        m.d.comb += [rq.i_valid.eq(Mux(gemm, arr.o_valid & flag["requant"], c.vec_fire_rq)),
                     rq.out_width.eq(Mux(gemm, g["out_bits"], vf["out_bits"])), rq.out_signed.eq(flag["signed"])]
        for lane in range(v):
            m.d.comb += [rq.i_x[lane].eq(Mux(gemm, arr.o_acc[lane], c.vec_a[lane])),
                         rq.i_ch[lane].eq(Mux(flag["per_tensor"], ch_base, ch_base + col * v + lane))]
        from_rq = Mux(gemm, flag["requant"], c.vec_unit_is_rq)
        m.d.comb += gelu.i_valid.eq(Mux(from_rq, rq.o_valid & flag["gelu"],
                                        Mux(gemm, arr.o_valid & flag["gelu"], c.vec_fire_gelu)))
        for lane in range(v):
            src = Mux(from_rq, rq.o_y[lane], Mux(gemm, arr.o_acc[lane], c.vec_a[lane]))
            m.d.comb += gelu.i_x[lane].eq(src[:gelu.in_bits])
        m.d.comb += c.vec_unit_is_rq.eq(vf["unit"] == _index("unit", "requant"))

    # ---------------------------------------------------------------- the write side
    def _write_back(self, m, c, f, flag, u, p, gemm, vector, in_load, op_gemm):
        """The last unit's results to ABUF: gemm rows column block by block (word ``out_base + t *
        out_stride + j``), vector words row by row; lanes past ``n_valid`` are written 0. The
        instruction retires on its last word."""
        v = self.v
        g, vf = f["gemm"], f["vector"]
        valid, words = self._results(m, flag, u, op_gemm, vf["unit"])
        wrow, wcol = c.reg(16), c.reg(16)
        wrow_at = c.reg(len(p.wa.addr))  # wrow * out_stride
        stride = Mux(gemm, g["out_stride"], vf["out_stride"])
        row_end = Mux(gemm, wrow == g["m"] - 1, wcol == vf["words"] - 1)
        last = Mux(gemm, row_end & (wcol == g["nf"] - 1), row_end & (wrow == vf["rows"] - 1))
        with m.If(valid & (gemm | vector)):
            with m.If(gemm):
                m.d.sync += [wrow.eq(Mux(row_end, 0, wrow + 1)), wrow_at.eq(Mux(row_end, 0, wrow_at + stride))]
                with m.If(row_end):
                    m.d.sync += wcol.eq(wcol + 1)
            with m.Else():
                m.d.sync += wcol.eq(Mux(row_end, 0, wcol + 1))
                with m.If(row_end):
                    m.d.sync += [wrow.eq(wrow + 1), wrow_at.eq(wrow_at + stride)]
            with m.If(last):
                m.d.comb += c.retire.eq(1)
        n_valid = Mux(gemm, g["n_valid"], vf["n_valid"])
        addr = Mux(gemm, g["out_base"], vf["out_base"]) + wrow_at + wcol
        inside = Cat(*[wcol * v + lane < n_valid for lane in range(v)])
        en, ld_addr, ld_data = c.load_abuf
        # registered: a word reaches the block RAM the cycle after its unit (or DRAM) gives it, so no unit's
        # output stage shares a cycle with the route to the buffer, and its lanes past n_valid are zeroed
        # after the register. The cycle contract does not move: the next instruction's fetch keeps its
        # first read of ABUF at least two cycles after this write
        w_data = Signal(ELEM_BITS * v, reset_less=True)
        w_keep = Signal(v)
        m.d.sync += [p.wa.en.eq(Mux(in_load, en, valid & (gemm | vector))), p.wa.addr.eq(Mux(in_load, ld_addr, addr)),
                     w_data.eq(Mux(in_load, ld_data, Cat(*words))), w_keep.eq(Mux(in_load, (1 << v) - 1, inside))]
        m.d.comb += Value.cast(p.wa.data).eq(Cat(*[Mux(w_keep[lane], w_data.word_select(lane, ELEM_BITS), 0)
                                                   for lane in range(v)]))

    def _results(self, m, flag, u, op_gemm, unit):
        """(valid, lanes as 32-bit elements) of the unit whose results this instruction writes.

        Which unit that is follows from the instruction register alone and is registered, one copy a lane
        and one for ``valid``, as a one-hot pick: each lane's select stays in that lane, and the pick is
        right from an instruction's second cycle on, before any unit can give it a result."""
        arr, rq, gelu, add, ln, sm = u.arr, u.rq, u.gelu, u.add, u.ln, u.sm
        v = self.v
        rq_y = [Mux(flag["signed"], _sext(rq.o_y[i]), _zext(rq.o_y[i])) for i in range(v)]
        sources = {
            "array": (arr.o_valid, [arr.o_acc[i] for i in range(v)]),
            "requant": (rq.o_valid, rq_y),
            "gelu": (gelu.o_valid, [_sext(gelu.o_y[i]) for i in range(v)]),
            "add": (add.o_valid, [add.o_y[i] for i in range(v)]),
            "layernorm": (ln.o_valid, [_sext(ln.o_y[i]) for i in range(v)]),
            "softmax": (sm.o_valid, [_zext(sm.o_q[i]) for i in range(v)]),
        }
        names = list(sources)
        idx = {n: names.index(n) for n in names}
        sel = Signal(range(len(sources)))
        after_rq = Mux(flag["gelu"], idx["gelu"], idx["requant"])
        by_unit = {"requant": after_rq, "gelu": idx["gelu"], "add": idx["add"], "add_const": idx["add"],
                   "layernorm": idx["layernorm"], "softmax": idx["softmax"]}
        m.d.comb += sel.eq(Mux(flag["requant"], after_rq, Mux(flag["gelu"], idx["gelu"], idx["array"])))
        with m.If(~op_gemm):
            with m.Switch(unit):
                for name, s in by_unit.items():
                    with m.Case(_index("unit", name)):
                        m.d.comb += sel.eq(s)
        one_hot = Cat(*[sel == i for i in range(len(sources))])
        picks = []
        for copy in ("valid", *range(v)):
            pick = replica(len(sources), f"pick_{copy}")
            m.d.sync += pick.eq(one_hot)
            picks.append(pick)
        valid = Cat(*[picks[0][i] & s[0] for i, s in enumerate(sources.values())]).any()
        words = []
        for lane in range(v):
            gated = [Mux(picks[1 + lane][i], Value.cast(s[1][lane]).as_signed(), 0)
                     for i, s in enumerate(sources.values())]
            words.append(functools.reduce(operator.or_, gated))
        return valid, words


class _Units:
    """The accelerator's units, each built by its ``from_accel``."""

    def __init__(self, m: Module, cfg, digits: int):
        self.arr = m.submodules.array = MacArray.from_accel(cfg, digits=digits)
        self.rq = m.submodules.requant = Requantizer.from_accel(cfg)
        self.gelu = m.submodules.gelu = Gelu.from_accel(cfg)
        self.sm = m.submodules.softmax = SoftmaxLog2.from_accel(cfg)
        self.ln = m.submodules.layernorm = LayerNorm.from_accel(cfg)
        self.add = m.submodules.adder = VectorAdder.from_accel(cfg)


class _Named:
    """Signals or ports under names: the buffers' ports (ABUF reads ``ra`` / ``rb`` and write ``wa``, WBUF
    read ``rw`` and write ``ww``), a gemm's running address offsets (``_gemm``)."""

    def __init__(self, **named):
        self.__dict__.update(named)


class _Control:
    """The controller's shared registers and the wires between its parts."""

    def __init__(self, m: Module):
        self.pc = Signal(PC_BITS)
        self.fetch_addr = Signal(32)
        self.fbeat = Signal(8)
        self.cycles = Signal(CYCLE_BITS)
        self.retire = Signal()
        self.exec_regs: list[Signal] = []  #: zeroed on every fetch, so each instruction starts from 0
        self.vec_fire_rq = Signal()
        self.vec_fire_gelu = Signal()
        self.vec_col = Signal(16)
        self.vec_unit_is_rq = Signal()
        self.vec_a = None
        self.load_abuf = None
        self.load_item = None

    def reg(self, shape) -> Signal:
        s = Signal(shape)
        self.exec_regs.append(s)
        return s
