"""Instruction-level cases for the whole accelerator, checked against ``sim.intops`` and ``sim.isa.instr_cycles``.

Each case loads its operands and tables, runs one instruction under test and stores the result words to
DRAM; :func:`build_cases` lays every case of a description into one image (one simulation), and
:func:`check` names, for the first elements that differ, the case, the instruction, the element, the
expected and the got, and every instruction whose clock edges differ from ``sim.isa.instr_cycles``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtl_tests.accelerator import ImageBuilder
from sim import intops, isa, widths
from sim.accel import layernorm_params, requant_params, softmax_params
from sim.isa import Instr

MAX_REPORTED = 8  #: mismatching elements named per case


@dataclass
class Case:
    """One instruction under test: its pc, where its result words went in DRAM, and what they must hold."""

    kind: str  #: the key of :data:`CASES` that made it
    name: str
    pc: int
    dram: int
    expected: np.ndarray  # (words, V) int64


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def to_words(x: np.ndarray, v: int) -> np.ndarray:
    """A [rows, n] tensor in row-major vector layout: (rows * ceil(n / V), V), lanes past n zero."""
    rows, n = x.shape
    out = np.zeros((rows, ceil_div(n, v) * v), np.int64)
    out[:, :n] = x
    return out.reshape(-1, v)


class CaseBuilder:
    """Lays cases into one image: ABUF from word 0 for each case (cases run one after the other)."""

    def __init__(self, accel, rng: np.random.Generator, instr_slots: int = 256):
        self.accel = accel
        self.rng = rng
        self.v = accel.array.rows
        self.img = ImageBuilder(accel, instr_slots)
        self.cases: list[Case] = []
        self.kind = ""

    # ------------------------------------------------------------ helpers
    def load_words(self, words: np.ndarray, addr: int) -> None:
        dram = self.img.abuf_words(words)
        self.img.add(Instr("load", {"target": "abuf", "addr": addr, "count": len(words), "dram": dram}))

    def load_items(self, target: str, values, addr: int = 0) -> None:
        bits = isa.load_item_bits(target, self.accel)
        dram = self.img.items(values, bits)
        self.img.add(Instr("load", {"target": target, "addr": addr, "count": len(values), "dram": dram}))

    def run(self, name: str, instr: Instr, out_addr: int, expected_words: np.ndarray) -> None:
        """The instruction under test, then a store of its ``len(expected_words)`` result words."""
        pc = self.img.add(instr)
        n = len(expected_words)
        dram = self.img.reserve(n * isa.beats(32 * self.v, self.img.bb))
        self.img.add(Instr("store", {"addr": out_addr, "count": n, "dram": dram}))
        self.cases.append(Case(self.kind, name, pc, dram, expected_words))

    def requant_table(self, channels: int, out_bits: int, is_signed: bool):
        """Random (M, shift, zero point) entries and their packed table items."""
        p = requant_params(self.accel)
        r = self.rng
        mult = r.integers(0, 1 << p["mult_bits"], channels)
        shift = r.integers(0, 48, channels)
        lo, hi = intops.int_range(out_bits, is_signed)
        zp = r.integers(lo // 4, hi // 4 + 1, channels)
        zp_bits = p["out_bits"] + 1
        items = [int(m) | int(s) << p["mult_bits"] | (int(z) & ((1 << zp_bits) - 1)) << (p["mult_bits"] + p["shift_bits"])
                 for m, s, z in zip(mult, shift, zp)]
        return (mult, shift, zp), items

    def gelu_table(self):
        table = self.rng.integers(-(1 << 15), 1 << 15, 1 << self.accel.gelu.in_bits)
        return table, [int(t) & ((1 << self.accel.gelu.out_bits) - 1) for t in table]


def _requant_expected(acc, tbl, channels, out_bits, is_signed):
    mult, shift, zp = tbl
    return intops.requantize(acc, mult[channels], shift[channels], out_bits, zp[channels], is_signed).astype(np.int64)


# ---------------------------------------------------------------- vector cases
def vector_requant_cases(b: CaseBuilder) -> None:
    v, r = b.v, b.rng
    for per_tensor, is_signed, gelu, out_bits in ((False, True, False, 8), (True, False, False, 16),
                                                  (False, True, True, 8)):
        rows, n = 3, 2 * v + 3
        words = ceil_div(n, v)
        a = r.integers(-(1 << 31), 1 << 31, (rows, n))
        tbl, items = b.requant_table(4 * v, out_bits, is_signed)
        b.load_items("requant", items)
        ch_base = 5
        ch = np.full(n, ch_base) if per_tensor else ch_base + np.arange(n)
        want = _requant_expected(a, tbl, ch, out_bits, is_signed)
        flags = {"signed"} if is_signed else set()
        if per_tensor:
            flags.add("per_tensor")
        if gelu:
            table, gitems = b.gelu_table()
            b.load_items("gelu", gitems)
            want = intops.gelu(want, table, b.accel.gelu.in_bits).astype(np.int64)
            flags.add("gelu")
        b.load_words(to_words(a, v), 0)
        instr = Instr("vector", {"unit": "requant", "rows": rows, "words": words, "a_base": 0, "a_stride": words,
                                 "out_base": 100, "out_stride": words, "n_valid": n, "out_bits": out_bits,
                                 "ch_base": ch_base}, frozenset(flags))
        b.run(f"vector requant per_tensor={per_tensor} signed={is_signed} gelu={gelu}", instr, 100,
              to_words(want, v))


def vector_gelu_cases(b: CaseBuilder) -> None:
    v, r = b.v, b.rng
    rows, n = 2, 3 * v
    lo, hi = intops.int_range(b.accel.gelu.in_bits)
    a = r.integers(lo, hi + 1, (rows, n))
    table, items = b.gelu_table()
    b.load_items("gelu", items)
    b.load_words(to_words(a, v), 8)
    words = ceil_div(n, v)
    instr = Instr("vector", {"unit": "gelu", "rows": rows, "words": words, "a_base": 8, "a_stride": words,
                             "out_base": 50, "out_stride": words, "n_valid": n - 1})
    want = intops.gelu(a, table, b.accel.gelu.in_bits).astype(np.int64)
    want[:, n - 1:] = 0
    b.run("vector gelu", instr, 50, to_words(want, v))


def vector_add_cases(b: CaseBuilder) -> None:
    v, r = b.v, b.rng
    rows, n = 3, 2 * v - 1
    words = ceil_div(n, v)
    lo, hi = intops.int_range(widths.ADDER_IN_BITS)  # the adder's operands: the residual stream
    for unit in ("add", "add_const"):
        a = r.integers(lo, hi + 1, (rows, n)) >> r.integers(0, 8)
        c = r.integers(lo, hi + 1, (rows, n)) >> r.integers(0, 8)
        a[0, :2], c[0, :2] = (lo, hi), (lo, hi)  # both rails: the widest sums
        b.load_words(to_words(a, v), 0)
        b.load_words(to_words(c, v), 40)
        if unit == "add":
            ma, mb, shift, out_bits = int(r.integers(0, 1 << 16)), int(r.integers(0, 1 << 16)), 17, 16
            want = intops.add(a, c, ma, mb, shift, out_bits)
        else:
            ma = mb = shift = 0
            out_bits = widths.ADDER_IN_BITS  # a sum of two rails saturates
            want = intops.add_const(a, c, out_bits)
        instr = Instr("vector", {"unit": unit, "rows": rows, "words": words, "a_base": 0, "a_stride": words,
                                 "b_base": 40, "b_stride": words, "out_base": 80, "out_stride": words,
                                 "n_valid": n, "out_bits": out_bits, "ma": ma, "mb": mb, "shift": shift})
        b.run(f"vector {unit}", instr, 80, to_words(np.asarray(want, np.int64), v))


def vector_layernorm_cases(b: CaseBuilder) -> None:
    v, r = b.v, b.rng
    p = layernorm_params(b.accel)
    for n, out_bits, shift in ((3 * v + 5, 16, 10), (2 * v, 8, 14)):
        rows, words = 3, ceil_div(n, v)
        x = r.integers(-(1 << (widths.LN_SHIFTED_IN_BITS - 1)), 1 << (widths.LN_SHIFTED_IN_BITS - 1), (rows, n))
        gamma = r.integers(-(1 << 12), 1 << 12, n)
        beta = r.integers(-(1 << 20), 1 << 20, n)
        in_shift = r.integers(0, widths.LN_MAX_IN_SHIFT + 1, n)
        lane = p["gamma_bits"] + p["beta_bits"] + 2
        entries = []
        for w in range(words):
            item = 0
            for c in range(v):
                k = w * v + c
                if k < n:
                    g = int(gamma[k]) & ((1 << p["gamma_bits"]) - 1)
                    bt = int(beta[k]) & ((1 << p["beta_bits"]) - 1)
                    item |= (g | bt << p["gamma_bits"] | int(in_shift[k]) << (p["gamma_bits"] + p["beta_bits"])) << (c * lane)
            entries.append(item)
        b.load_items("layernorm", entries)
        b.load_words(to_words(x, v), 3)
        instr = Instr("vector", {"unit": "layernorm", "rows": rows, "words": words, "a_base": 3, "a_stride": words,
                                 "out_base": 200, "out_stride": words, "n_valid": n, "out_bits": out_bits,
                                 "shift": shift})
        want = intops.layernorm(x, gamma, beta, shift, out_bits, p["frac_bits"], p["recip_bits"], in_shift=in_shift)
        b.run(f"vector layernorm n={n}", instr, 200, to_words(np.asarray(want, np.int64), v))


def vector_softmax_cases(b: CaseBuilder) -> None:
    v, r = b.v, b.rng
    p = softmax_params(b.accel)
    # (n, sqrt2, mask, TULQ's (knee, step_bits, grid_bits) or None for log2 codes); with TULQ sqrt2 puts the
    # log region in half steps
    for n, sqrt2, masked, tulq in ((2 * v + 3, False, False, None), (3 * v, True, True, None),
                                   (2 * v + 3, False, False, (1, 3, 11)), (v - 1, True, True, (0, 2, 6)),
                                   (3 * v, False, True, (2, 4, widths.MAX_TULQ_GRID_BITS)),
                                   (3 * v, True, False, (2, 3, 6))):
        rows, words = 4, ceil_div(n, v)
        t = r.integers(-(1 << 11), 1 << 11, (rows, n)) >> (3 if tulq else 0)  # TULQ: most levels nonzero
        keys = (r.random((rows, n)) < 0.7).astype(np.int64)
        keys[:, 0] = 1
        if tulq:
            t[0, 0] = 1 << 10  # a key far above the rest: the uniform region's top level
        if tulq and masked:
            keys[-1] = 0  # a row with no key: all 0
        b.load_words(to_words(t, v), 0)
        b.load_words(to_words(keys, v), 64)
        flags = {"sqrt2"} if sqrt2 else set()
        if masked:
            flags.add("mask")
        fields = {}
        if tulq:
            flags.add("tulq")
            fields = dict(zip(("knee", "step_bits", "grid_bits"), tulq))
        instr = Instr("vector", {"unit": "softmax", "rows": rows, "words": words, "a_base": 0, "a_stride": words,
                                 "b_base": 64, "b_stride": words, "out_base": 128, "out_stride": words,
                                 "n_valid": n, **fields}, frozenset(flags))
        valid = keys.astype(bool) if masked else np.ones((rows, n), bool)
        if tulq:
            want = intops.softmax_tulq(t, valid, *tulq, p["frac_bits"], p["exp_bits"], sqrt2=sqrt2)
        else:
            want = intops.softmax_log2(t, valid, p["code_bits"], p["frac_bits"], p["exp_bits"], sqrt2=sqrt2)
        b.run(f"vector softmax n={n} sqrt2={sqrt2} mask={masked}{f' tulq={tulq}' if tulq else ''}", instr, 128,
              to_words(np.asarray(want, np.int64), v))


# ---------------------------------------------------------------- gemm cases
def _wbuf_tiles(w: np.ndarray, v: int, port_bits: int) -> tuple[np.ndarray, int]:
    """W [N, K] as WBUF words and its weight digits: fold (j, i, e) beat r lane c holds digit e of
    W[j V + c, i V + r] (``sim.intops.weight_digit_planes``)."""
    n, k = w.shape
    nf, kf = ceil_div(n, v), ceil_div(k, v)
    planes = intops.weight_digit_planes(w, port_bits)
    wp = np.zeros((len(planes), nf * v, kf * v), np.int64)
    wp[:, :n, :k] = planes
    words = [wp[e, j * v:(j + 1) * v, i * v:(i + 1) * v].T for j in range(nf) for i in range(kf)
             for e in range(len(planes))]
    return np.stack(words).reshape(-1, v), len(planes)


def gemm_linear_cases(b: CaseBuilder) -> None:
    v, r, a = b.v, b.rng, b.accel
    ab, wb = a.array.act_bits, a.array.weight_bits
    wide = min(2 * wb, widths.MAX_WEIGHT_BITS)  # weights past the port: digit planes (none on an int8 port)
    cases = [  # (m, k, n, x bits, x signed, requant, gelu, bias, weight bits)
        (5, 2 * v + 3, v + 2, ab, True, False, False, True, wb),
        (3, v, 2 * v, 2 * ab, False, True, False, True, wb),
        (4, v + 1, v - 1, ab, True, True, True, False, wb),
        (2, 2 * v, v, 2 * ab, True, False, False, True, wb),
        (3, v + 3, 2 * v + 1, ab, True, True, False, True, wide),
        (2, 2 * v, v, 2 * ab, False, False, False, True, min(wb + 2, widths.MAX_WEIGHT_BITS)),
    ]
    for m, k, n, xbits, xsigned, rq, gelu, bias, wbits in cases:
        digits = ceil_div(xbits, ab)
        xlo, xhi = intops.int_range(xbits, xsigned)
        x = r.integers(xlo, xhi + 1, (m, k))
        wlo, whi = intops.int_range(wbits)
        w = r.integers(wlo, whi + 1, (n, k))
        w[0, :2] = wlo, whi  # the range's ends (int8 on an int4 port: three digits)
        bvec = r.integers(-(1 << 20), 1 << 20, n) if bias else np.zeros(n, np.int64)
        unsigned = (1 << digits) - 1 if not xsigned else (1 << (digits - 1)) - 1
        corr = sum((1 << (ab - 1)) << (d * ab) for d in range(digits) if unsigned >> d & 1)
        kf, nf = ceil_div(k, v), ceil_div(n, v)
        tiles, w_digits = _wbuf_tiles(w, v, wb)
        dram = b.img.lanes(tiles, wb)
        b.img.add(Instr("load", {"target": "wbuf", "addr": 7, "count": len(tiles), "dram": dram}))
        b.load_words(to_words(x, v), 0)
        b.load_words(to_words((bvec + corr * w.sum(axis=1))[None, :], v), 300)
        acc = intops.linear(x, w, bvec)
        flags = {"bias"} if bias else set()
        out_bits = 8
        if rq:
            tbl, items = b.requant_table(nf * v + 3, out_bits, True)
            b.load_items("requant", items)
            want = _requant_expected(acc, tbl, 3 + np.arange(n), out_bits, True)
            flags |= {"requant", "signed"}
            if gelu:
                table, gitems = b.gelu_table()
                b.load_items("gelu", gitems)
                want = intops.gelu(want, table, a.gelu.in_bits)
                flags.add("gelu")
        else:
            want = acc
        instr = Instr("gemm", {"mode": "linear", "m": m, "kf": kf, "nf": nf, "digits": digits,
                               "w_digits": w_digits, "unsigned_digits": unsigned, "x_base": 0, "x_stride": kf,
                               "s_base": 7, "bias_base": 300, "out_base": 400, "out_stride": nf, "n_valid": n,
                               "out_bits": out_bits, "ch_base": 3}, frozenset(flags))
        b.run(f"gemm linear m={m} k={k} n={n} x=int{xbits}{'' if xsigned else 'u'} w=int{wbits} requant={rq} "
              f"gelu={gelu}",
              instr, 400, to_words(np.asarray(want, np.int64), v))


def gemm_matmul_cases(b: CaseBuilder) -> None:
    v, r, a = b.v, b.rng, b.accel
    ab, wb = a.array.act_bits, a.array.weight_bits
    top = widths.MAX_WEIGHT_BITS  # operands past the ports: balanced signed digits (none past an int8 port)
    for m, k, n, xbits, ybits in ((6, v + 3, v + 5, ab, wb), (3, 2 * v, v, ab, wb),
                                  (4, v + 2, v + 3, top, min(wb + 2, top)), (3, v, v + 1, min(ab + 2, top), top)):
        kf, nf = ceil_div(k, v), ceil_div(n, v)
        x = r.integers(*intops.int_range(xbits), (m, k), endpoint=True)
        y = r.integers(*intops.int_range(ybits), (n, k), endpoint=True)
        x[0, :2], y[0, :2] = intops.int_range(xbits), intops.int_range(ybits)  # the ranges' ends
        digits, w_digits = intops.signed_digits(xbits, ab), intops.signed_digits(ybits, wb)
        b.load_words(to_words(x, v), 0)
        ywords = to_words(y, v)
        garbage = r.integers(*intops.int_range(wb), (v * kf, v), endpoint=True)  # rows past s_valid
        b.load_words(np.concatenate([ywords, garbage]), 100)
        instr = Instr("gemm", {"mode": "matmul", "m": m, "kf": kf, "nf": nf, "digits": digits, "w_digits": w_digits,
                               "x_base": 0, "x_stride": kf, "s_base": 100, "s_stride": kf, "s_valid": n,
                               "out_base": 400, "out_stride": nf, "n_valid": n})
        b.run(f"gemm matmul m={m} k={k} n={n} int{xbits} x int{ybits}", instr, 400,
              to_words(intops.matmul(x, y.T).astype(np.int64), v))


def gemm_log2_cases(b: CaseBuilder) -> None:
    v, r, a = b.v, b.rng, b.accel
    wb = a.array.weight_bits
    code_bits = softmax_params(a)["code_bits"]
    for m, t, d, sqrt2, vbits in ((5, v + 3, v + 1, False, wb), (3, 2 * v, v, True, wb),
                                  (4, v + 2, v + 1, True, widths.MAX_WEIGHT_BITS)):
        kf, nf = ceil_div(t, v), ceil_div(d, v)
        codes = r.integers(0, 1 << code_bits, (m, t))
        vals = r.integers(*intops.int_range(vbits), (t, d), endpoint=True)
        vals[:2, 0] = intops.int_range(vbits)  # the range's ends
        cw = to_words(codes, v).reshape(m, kf, v)
        cw[:, -1, t - (kf - 1) * v:] = r.integers(0, 1 << code_bits, (m, kf * v - t))  # codes past T: any
        b.load_words(cw.reshape(-1, v), 0)
        vw = to_words(vals, v)
        garbage = r.integers(*intops.int_range(wb), (v * nf, v), endpoint=True)
        b.load_words(np.concatenate([vw, garbage]), 100)
        instr = Instr("gemm", {"mode": "log2", "m": m, "kf": kf, "nf": nf, "digits": 1,
                               "w_digits": intops.signed_digits(vbits, wb),
                               "x_base": 0, "x_stride": kf, "s_base": 100, "s_stride": nf, "s_valid": t,
                               "out_base": 400, "out_stride": nf, "n_valid": d}, frozenset({"sqrt2"} if sqrt2 else ()))
        want = intops.matmul_log2(codes, vals, code_bits, sqrt2=sqrt2).astype(np.int64)
        b.run(f"gemm log2 m={m} t={t} d={d} sqrt2={sqrt2} V int{vbits}", instr, 400, to_words(want, v))


def gemm_matmul_kn_cases(b: CaseBuilder) -> None:
    """``a @ b`` with b stationary as the log2 path holds V: truncated uniform-log2 levels (unsigned, up to
    ``2**grid_bits``) streamed in balanced digits against V."""
    v, r, a = b.v, b.rng, b.accel
    ab, wb = a.array.act_bits, a.array.weight_bits
    for m, t, d, grid, vbits in ((5, v + 3, v + 1, 6, wb), (3, 2 * v, v, widths.MAX_TULQ_GRID_BITS, wb),
                                 (4, v + 2, v + 1, 10, widths.MAX_WEIGHT_BITS)):
        kf, nf = ceil_div(t, v), ceil_div(d, v)
        levels = r.integers(0, (1 << grid) + 1, (m, t))
        levels[0, :2] = 0, 1 << grid  # the range's ends
        vals = r.integers(*intops.int_range(vbits), (t, d), endpoint=True)
        vals[:2, 0] = intops.int_range(vbits)
        b.load_words(to_words(levels, v), 0)
        garbage = r.integers(*intops.int_range(wb), (v * nf, v), endpoint=True)  # rows past s_valid
        b.load_words(np.concatenate([to_words(vals, v), garbage]), 100)
        instr = Instr("gemm", {"mode": "matmul_kn", "m": m, "kf": kf, "nf": nf,
                               "digits": intops.signed_digits(grid + 1, ab, signed=False),
                               "w_digits": intops.signed_digits(vbits, wb),
                               "x_base": 0, "x_stride": kf, "s_base": 100, "s_stride": nf, "s_valid": t,
                               "out_base": 400, "out_stride": nf, "n_valid": d})
        b.run(f"gemm matmul_kn m={m} t={t} d={d} uint{grid + 1} x int{vbits}", instr, 400,
              to_words(intops.matmul(levels, vals).astype(np.int64), v))


CASES = {
    "vector_requant": vector_requant_cases, "vector_gelu": vector_gelu_cases, "vector_add": vector_add_cases,
    "vector_layernorm": vector_layernorm_cases, "vector_softmax": vector_softmax_cases,
    "gemm_linear": gemm_linear_cases, "gemm_matmul": gemm_matmul_cases, "gemm_log2": gemm_log2_cases,
    "gemm_matmul_kn": gemm_matmul_kn_cases,
}


def build_cases(accel, kinds=tuple(CASES), seed: int = 0) -> CaseBuilder:
    """Every case of ``kinds`` in one image, ending with ``end``."""
    b = CaseBuilder(accel, np.random.default_rng(seed))
    for kind in kinds:
        b.kind = kind
        CASES[kind](b)
    b.img.add(Instr("end"))
    return b


def check(b: CaseBuilder, image: np.ndarray, retires: list[tuple[int, int]], kind: str | None = None) -> list[str]:
    """Every mismatch of the run, one line each: results against the cases and clock edges against
    ``sim.isa.instr_cycles`` for the instructions under test of ``kind``, or (None) for every case and
    every instruction."""
    if [pc for pc, _ in retires] != list(range(len(b.img.instrs))):
        return [f"retired pcs {[pc for pc, _ in retires][:20]}..., expected 0..{len(b.img.instrs) - 1}"]
    cases = [c for c in b.cases if kind is None or c.kind == kind]
    problems = []
    for case in cases:
        got = b.img.read_abuf_words(image, case.dram, len(case.expected))
        bad = np.argwhere(got != case.expected)
        for word, lane in bad[:MAX_REPORTED]:
            problems.append(f"{case.name} (pc {case.pc}): word {word} lane {lane}: expected "
                            f"{case.expected[word, lane]}, got {got[word, lane]}")
        if len(bad) > MAX_REPORTED:
            problems.append(f"{case.name} (pc {case.pc}): {len(bad) - MAX_REPORTED} more elements differ")
    pcs = range(len(b.img.instrs)) if kind is None else [c.pc for c in cases]
    for pc in pcs:
        instr = b.img.instrs[pc]
        took = retires[pc][1] - (retires[pc - 1][1] if pc else 0)
        want = isa.instr_cycles(instr, b.accel)
        if took != want:
            what = instr.fields.get("unit", instr.fields.get("mode", instr.fields.get("target", "")))
            problems.append(f"pc {pc} ({instr.op} {what}): {took} clock edges, sim.isa.instr_cycles says {want}")
    return problems
