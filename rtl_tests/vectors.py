"""Test vectors for the RTL benches: seeded random, corner cases, and replayed program traces.

Each ``<unit>_vectors(params, ...)`` returns the dict of arrays its bench reads
(``vectors.npz``); every source fills the same fields, so a trace file is
one more data source, merged with :func:`merge`.
"""

from __future__ import annotations

import numpy as np

from sim import intops, widths

SEED = 20240611
SHORT_M = 64  #: rows of most random GEMMs on an array whose accumulator buffer holds more
LONG_K_FOLDS = 256  #: reduction folds of the longest GEMM a bench runs (16 rows: max_k = 4096 terms)
SHORT_N = 128  #: channels of half the random LayerNorm rows on a unit whose row buffer holds more


def _magnitudes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """Signed ``bits``-wide integers with log-uniform magnitudes (small and huge values both common)."""
    lo, hi = intops.int_range(bits)
    k = rng.integers(0, bits, n)
    mag = rng.integers(0, 1 << 62, n) >> (62 - k)
    x = np.where(rng.random(n) < 0.5, -mag - 1, mag)
    return np.clip(x, lo, hi)


def merge(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate vector dicts field by field (segments follow one another)."""
    parts = [p for p in parts if p]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ---------------------------------------------------------------- requant

def requant_segment(x, ch, m, shift, zp, out_width: int, out_signed: bool, op: str,
                    source: str) -> dict[str, np.ndarray]:
    """One requant op: elements ``x`` of channels ``ch``, the per-channel table (m, shift, zp)."""
    return {"x": np.asarray(x, np.int64), "ch": np.asarray(ch, np.int64),
            "seg_len": np.array([len(x)]), "seg_m": np.asarray(m, np.int64)[None],
            "seg_shift": np.asarray(shift, np.int64)[None], "seg_zp": np.asarray(zp, np.int64)[None],
            "seg_width": np.array([out_width]), "seg_signed": np.array([int(out_signed)]),
            "seg_op": np.array([op]), "seg_source": np.array([source])}


def requant_vectors(p: dict, n_random: int = 12_000, seed: int = SEED) -> dict[str, np.ndarray]:
    """Random segments with varied tables, output widths and signedness, then the corner cases:
    both rails, most-negative x, M = 0 / 1 / max, shifts 0, 1, the product width and beyond,
    exact rounding ties."""
    rng = np.random.default_rng(seed)
    c, in_bits, mult_bits, out_bits = p["channels"], p["in_bits"], p["mult_bits"], p["out_bits"]
    w = in_bits + mult_bits
    xlo, xhi = intops.int_range(in_bits)
    max_shift = (1 << p["shift_bits"]) - 1
    formats = sorted({(min(4, out_bits), True), (min(8, out_bits), True), (out_bits, True),
                      (min(4, out_bits), False), (out_bits, False)})
    segs = []
    n_seg = 8
    for k in range(n_seg):
        width, sgn = formats[k % len(formats)]
        zlo, zhi = intops.int_range(width, sgn)
        n = n_random // n_seg
        if p["pow2"]:  # M = 2**k: a left shift (programs pair k > 0 with no right shift; the unit does both)
            m = 1 << np.where(rng.random(c) < 0.5, 0, rng.integers(0, mult_bits, c))
        else:
            m = rng.integers(0, 1 << mult_bits, c)
        # shifts that land the product near the output range, plus uniformly random ones
        target = np.clip(w - 1 - width + rng.integers(-8, 9, c), 0, max_shift)
        shift = np.where(rng.random(c) < 0.75, target, rng.integers(0, max_shift + 1, c))
        zp = rng.integers(zlo, zhi + 1, c) if k % 2 else np.full(c, (zlo + zhi + 1) // 2)
        x = _magnitudes(rng, n, in_bits)
        segs.append(requant_segment(x, rng.integers(0, c, n), m, shift, zp, width, sgn,
                                    f"random{k}_{'s' if sgn else 'u'}{width}", "random"))
    # corners: every (x, M, shift) combination of extreme values, one channel per (M, shift)
    ms = [1, 2, 1 << (mult_bits - 1)] if p["pow2"] else [0, 1, (1 << mult_bits) - 1, 1 << (mult_bits - 1)]
    shifts = sorted({0, 1, 2, w - 1, w, min(w + 1, max_shift), max_shift, min(62, max_shift)})
    pairs = [(mm, ss) for mm in ms for ss in shifts][:c]
    m = np.array([pairs[i % len(pairs)][0] for i in range(c)])
    shift = np.array([pairs[i % len(pairs)][1] for i in range(c)])
    xs = np.array([xlo, xlo + 1, xhi, xhi - 1, 0, 1, -1, 2, -2, 3, -3])
    ch = np.repeat(np.arange(len(pairs)), len(xs))
    x = np.tile(xs, len(pairs))
    for width, sgn in formats:
        zlo, zhi = intops.int_range(width, sgn)
        for zp in (zlo, zhi, (zlo + zhi + 1) // 2):
            segs.append(requant_segment(x, ch, m, shift, np.full(c, zp), width, sgn,
                                        f"corner_{'s' if sgn else 'u'}{width}_zp{zp}", "corner"))
    # every channel of the table addressed, the last one included, each with its own (M, shift, zero point)
    m = 1 << rng.integers(0, mult_bits, c) if p["pow2"] else rng.integers(0, 1 << mult_bits, c)
    shift = np.clip(w - 1 - out_bits + rng.integers(-4, 5, c), 0, max_shift)
    zlo, zhi = intops.int_range(out_bits)
    ch = np.concatenate([np.arange(c), rng.permutation(c)])
    segs.append(requant_segment(_magnitudes(rng, 2 * c, in_bits), ch, m, shift, rng.integers(zlo, zhi + 1, c),
                                out_bits, True, "every_channel", "corner"))
    # rounding ties: x*M exactly k*2**s + 2**(s-1), positive and negative
    s = np.clip(rng.integers(1, 16, c), 1, max_shift)
    m = 1 << rng.integers(0, 6, c) if p["pow2"] else rng.integers(1, 64, c)
    ch = rng.integers(0, c, 2000)
    k = rng.integers(-40, 40, 2000)
    target = k * (1 << s[ch]) + (1 << (s[ch] - 1))
    x = np.clip(target // m[ch], xlo, xhi)  # exact ties where M divides, near-ties elsewhere
    segs.append(requant_segment(x, ch, m, s, np.zeros(c, np.int64), out_bits, True, "ties", "corner"))
    return merge(*segs)


# ---------------------------------------------------------------- gelu

def gelu_segment(x, table, op: str, source: str) -> dict[str, np.ndarray]:
    return {"x": np.asarray(x, np.int64), "seg_len": np.array([len(x)]),
            "seg_table": np.asarray(table, np.int64)[None], "seg_op": np.array([op]),
            "seg_source": np.array([source])}


def gelu_table(in_bits: int, out_bits: int, s_in: float, s_out: float) -> np.ndarray:
    """A quantized GELU table like the quantizer's (tanh form; test data, not the inference path)."""
    x = (np.arange(1 << in_bits) - (1 << (in_bits - 1))) * s_in
    y = 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3)))
    return intops.saturate(np.round(y / s_out), out_bits)


def gelu_vectors(p: dict, n_random: int = 10_000, seed: int = SEED) -> dict[str, np.ndarray]:
    """GELU tables at several scales plus random and rail-valued tables; every input code, both ends."""
    rng = np.random.default_rng(seed)
    in_bits, out_bits = p["in_bits"], p["out_bits"]
    lo, hi = intops.int_range(in_bits)
    olo, ohi = intops.int_range(out_bits)
    every = np.arange(lo, hi + 1)
    segs = []
    for k, (s_in, s_out) in enumerate([(0.05, 0.02), (0.02, 0.02), (0.1, 0.01)]):
        x = np.concatenate([every, rng.integers(lo, hi + 1, n_random // 4)])
        segs.append(gelu_segment(x, gelu_table(in_bits, out_bits, s_in, s_out), f"gelu_scale{k}", "random"))
    table = rng.integers(olo, ohi + 1, 1 << in_bits)
    x = np.concatenate([every, rng.integers(lo, hi + 1, n_random // 4)])
    segs.append(gelu_segment(x, table, "random_table", "random"))
    rails = np.where(np.arange(1 << in_bits) % 2, ohi, olo)
    segs.append(gelu_segment(np.concatenate([every, [lo, hi, lo, hi]]), rails, "rail_table", "corner"))
    return merge(*segs)


# ---------------------------------------------------------------- mac array

def gemm_case(x, w, b, op: str, source: str, mode: int = 0) -> dict[str, np.ndarray]:
    """``x @ w.T + b`` on the array; ``mode`` 1 / 2: x holds log2 / log-sqrt(2) codes, w holds V.T, b = 0."""
    x, w, b = (np.asarray(t, np.int64) for t in (x, w, b))
    return {"x": x.ravel(), "w": w.ravel(), "b": b.ravel(), "g_kind": np.array([mode]), "g_m": np.array([x.shape[0]]),
            "g_k": np.array([x.shape[1]]), "g_n": np.array([w.shape[0]]), "g_op": np.array([op]),
            "g_source": np.array([source])}


def mac_array_vectors(p: dict, n_outputs: int = 10_000, seed: int = SEED) -> dict[str, np.ndarray]:
    """Random GEMMs of varied shape (k and n off the array's multiples), until ``n_outputs`` dot
    products, then corners: most-negative operands everywhere, biases at both rails (saturating
    and coming back inside), a single fold, a single row."""
    rng = np.random.default_rng(seed)
    rows, cols, a_bits, w_bits, acc = p["rows"], p["cols"], p["act_bits"], p["weight_bits"], p["acc_bits"]
    alo, ahi = intops.int_range(a_bits)
    wlo, whi = intops.int_range(w_bits)
    blo, bhi = intops.int_range(acc)
    max_m = p["max_m"]
    cases, total = [], 0
    while total < n_outputs:
        # a deep accumulator buffer (an exported array holds 512 rows): most GEMMs short, for more shapes
        short = max_m > SHORT_M and rng.random() < 0.75
        m = int(rng.integers(1, (SHORT_M if short else max_m) + 1))
        k = int(rng.integers(1, 3 * rows + 1))
        n = int(rng.integers(1, 3 * cols + 1))
        b = np.where(rng.random(n) < 0.8, rng.integers(-1000, 1000, n), rng.integers(blo, bhi + 1, n))
        cases.append(gemm_case(rng.integers(alo, ahi + 1, (m, k)), rng.integers(wlo, whi + 1, (n, k)), b,
                               f"random{len(cases)}", "random"))
        total += m * n
    k = 3 * rows + 1
    cases.append(gemm_case(np.full((max_m, k), alo), np.full((cols + 1, k), wlo), np.zeros(cols + 1),
                           "most_negative", "corner"))
    cases.append(gemm_case(np.full((4, k), alo), np.full((cols, k), wlo), np.full(cols, bhi),
                           "saturate_high", "corner"))
    cases.append(gemm_case(np.full((4, k), alo), np.full((cols, k), whi), np.full(cols, blo),
                           "saturate_low", "corner"))
    # past a rail after the first fold, back inside after the second: exact accumulation, then saturation
    x = np.full((3, 2 * rows), alo)
    w = np.concatenate([np.full((cols, rows), wlo), np.full((cols, rows), whi)], axis=1)
    up = rows * alo * wlo  # the first fold's sum, > 0; the second fold's is < 0
    cases.append(gemm_case(x, w, np.full(cols, bhi - up + 1), "over_high_then_back", "corner"))
    down = rows * alo * (-wlo - 1)  # mirrored: the first fold's sum < 0, the second's > 0
    cases.append(gemm_case(x, -w - 1, np.full(cols, blo - down - 1), "under_low_then_back", "corner"))
    cases.append(gemm_case(rng.integers(alo, ahi + 1, (1, rows)), rng.integers(wlo, whi + 1, (cols, rows)),
                           rng.integers(blo, bhi + 1, cols), "one_fold_one_row", "corner"))
    cases.append(gemm_case(rng.integers(alo, ahi + 1, (max_m, rows)), rng.integers(wlo, whi + 1, (cols, rows)),
                           np.zeros(cols), "one_fold_full", "corner"))
    m = min(max_m, SHORT_M)
    cases.append(gemm_case(rng.integers(alo, ahi + 1, (m, 3 * rows)), rng.integers(wlo, whi + 1, (2 * cols, 3 * rows)),
                           rng.integers(-1000, 1000, 2 * cols), "full_folds_3x2", "corner"))
    # the longest reduction (the max_k terms the accumulators add exactly, at most LONG_K_FOLDS folds): the
    # largest product everywhere from the high rail (saturating), then up past the high rail by k1 of them
    # and back inside by the rest
    long_k = min(p["max_k"], LONG_K_FOLDS * rows)
    x = np.full((2, long_k), alo)
    cases.append(gemm_case(x, np.full((cols, long_k), wlo), np.full(cols, bhi), "longest_k_saturate_high", "corner"))
    k1 = long_k * 9 // 20  # alo * whi = -(alo * wlo + alo): the other long_k - k1 outweigh k1 * alo * wlo
    w = np.concatenate([np.full((cols, k1), wlo), np.full((cols, long_k - k1), whi)], axis=1)
    cases.append(gemm_case(x, w, np.full(cols, bhi), "longest_k_over_high_then_back", "corner"))
    if p["log2"]:  # attention x V with log2 codes: every code, both bases, most-negative V
        codes = 1 << p["code_bits"]
        for mode in (1, 2):
            for j in range(4):
                m, k, n = int(rng.integers(1, max_m + 1)), int(rng.integers(1, 3 * rows + 1)), \
                    int(rng.integers(1, 2 * cols + 1))
                c = rng.integers(0, codes, (m, k))
                v = rng.integers(wlo, whi + 1, (n, k))
                cases.append(gemm_case(c, v, np.zeros(n), f"log2_{'sqrt2_' if mode == 2 else ''}{j}", "random", mode))
            c = np.arange(2 * codes * rows).reshape(-1, rows) % codes
            cases.append(gemm_case(c, np.full((cols, rows), wlo), np.zeros(cols),
                                   f"log2_{'sqrt2_' if mode == 2 else ''}every_code_most_negative", "corner", mode))
        # the largest weight (code 0 of base sqrt(2)) times the most-negative V over the longest reduction
        cases.append(gemm_case(np.zeros((2, long_k)), np.full((cols, long_k), wlo), np.zeros(cols),
                               "log2_sqrt2_longest_k_code0_most_negative", "corner", 2))
    return merge(*cases)


# ---------------------------------------------------------------- softmax

#: TULQ segments' levels (``sim.intops.softmax_tulq``'s knee, step_bits, grid_bits, sqrt2): its default, no
#: uniform region, knee = step_bits, the finest grid, all three at the most, the coarsest grid; in base 2 and
#: in half steps
TULQ_FIELDS = tuple(dict(knee=k, step_bits=s, grid_bits=g, sqrt2=h)
                    for k, s, g in ((1, 3, 11), (0, 4, 12), (2, 2, 5), (3, 6, widths.MAX_TULQ_GRID_BITS),
                                    (widths.MAX_TULQ_GRID_BITS,) * 3, (0, 0, 0))
                    for h in (False, True))


def softmax_segment(t, mask, op: str, source: str, sqrt2: bool = False,
                    tulq: dict | None = None) -> dict[str, np.ndarray]:
    """One softmax op: rows ``t`` and their ``mask``, as log2 codes (``sqrt2``: half steps) or, with ``tulq``
    (``sim.intops.softmax_tulq``'s knee, step_bits, grid_bits and optional sqrt2), as its levels."""
    t = np.asarray(t, np.int64)
    tulq_on = tulq is not None
    tulq = tulq or {}
    return {"t": t.ravel(), "mask": np.asarray(mask, np.int64).ravel(), "seg_rows": np.array([t.shape[0]]),
            "seg_sqrt2": np.array([int(sqrt2 or tulq.get("sqrt2", False))]), "seg_tulq": np.array([int(tulq_on)]),
            "seg_knee": np.array([tulq.get("knee", 0)]), "seg_step_bits": np.array([tulq.get("step_bits", 0)]),
            "seg_grid_bits": np.array([tulq.get("grid_bits", 0)]),
            "seg_len": np.array([t.shape[1]]), "seg_op": np.array([op]), "seg_source": np.array([source])}


def softmax_vectors(p: dict, n_random: int = 10_000, seed: int = SEED) -> dict[str, np.ndarray]:
    """Rows of random length with scores spread over a few to many log2 units (codes of every value),
    random masks; corners: all-equal rows, fully masked rows, one position left, both rails in one
    row, length 1, the longest row, lengths off the lane multiple. Then TULQ levels for each of
    :data:`TULQ_FIELDS`: random rows (one fully masked), short peaked rows (probabilities above
    ``2**-knee``: the uniform region), half steps of d, length 1, all-equal rows."""
    rng = np.random.default_rng(seed)
    lo, hi = intops.int_range(p["in_bits"])
    one = 1 << p["frac_bits"]  # one log2 unit
    max_len = p["max_len"]
    segs, total = [], 0
    while total < n_random:
        length = int(rng.integers(1, max_len + 1))
        rows = int(rng.integers(1, 8))
        spread = int(rng.choice([2, 8, 20, 200])) * one
        centre = int(rng.integers(lo + spread, hi - spread))
        t = np.clip(centre + rng.integers(-spread, spread + 1, (rows, length)), lo, hi)
        mask = rng.random((rows, length)) < rng.choice([1.0, 0.9, 0.5])
        sqrt2 = len(segs) % 3 == 2
        segs.append(softmax_segment(t, mask, f"random{len(segs)}{'_sqrt2' if sqrt2 else ''}", "random", sqrt2))
        total += rows * length
    n = max_len
    segs.append(softmax_segment(np.full((3, n), 7), np.ones((3, n)), "all_equal", "corner"))
    segs.append(softmax_segment(np.array([[lo] * n, [hi] * n]), np.ones((2, n)), "all_equal_rails", "corner"))
    segs.append(softmax_segment(rng.integers(lo, hi, (2, n)), np.zeros((2, n)), "fully_masked", "corner"))
    one_left = np.zeros((2, n))
    one_left[0, 0] = one_left[1, n - 1] = 1
    segs.append(softmax_segment(rng.integers(lo, hi, (2, n)), one_left, "one_valid", "corner"))
    rails = np.where(np.arange(n) % 2, hi, lo)[None].repeat(2, 0)
    segs.append(softmax_segment(rails, np.ones((2, n)), "both_rails", "corner"))
    segs.append(softmax_segment(rng.integers(lo, hi, (3, 1)), np.ones((3, 1)), "length1", "corner"))
    near = 100 + np.arange(n)[None] * (one // 2)  # d steps through half units: every rounding boundary
    segs.append(softmax_segment(near, np.ones((1, n)), "half_steps", "corner"))
    segs.append(softmax_segment(near, np.ones((1, n)), "half_steps_sqrt2", "corner", sqrt2=True))
    segs.append(softmax_segment(np.full((2, n), -3), np.ones((2, n)), "all_equal_sqrt2", "corner", sqrt2=True))
    for length in sorted({max(1, p["lanes"] + 1), max(1, 2 * p["lanes"] - 1)}):
        segs.append(softmax_segment(rng.integers(-5 * one, 5 * one, (2, length)), np.ones((2, length)),
                                    f"length{length}", "corner"))
    for fields in TULQ_FIELDS:
        tag = "tulq_{knee}_{step_bits}_{grid_bits}{}".format("_sqrt2" if fields["sqrt2"] else "", **fields)
        for k in range(2):
            length, rows = int(rng.integers(1, max_len + 1)), int(rng.integers(2, 8))
            spread = int(rng.choice([1, 4, 20])) * one
            centre = int(rng.integers(lo + spread, hi - spread))
            t = centre + rng.integers(-spread, spread + 1, (rows, length))
            mask = rng.random((rows, length)) < rng.choice([1.0, 0.9, 0.5])
            if k:
                mask[rng.integers(rows)] = False
            segs.append(softmax_segment(t, mask, f"{tag}_random{k}", "random", tulq=fields))
        peaked = rng.integers(0, 4 * one, (24, 3))  # the top one to four log2 units above the rest
        segs.append(softmax_segment(peaked, rng.random((24, 3)) < 0.9, f"{tag}_peaked", "corner", tulq=fields))
        segs.append(softmax_segment(near, np.ones((1, n)), f"{tag}_half_steps", "corner", tulq=fields))
        segs.append(softmax_segment(rng.integers(lo, hi, (2, 1)), np.ones((2, 1)), f"{tag}_length1", "corner",
                                    tulq=fields))
        segs.append(softmax_segment(np.full((2, n), 7), np.ones((2, n)), f"{tag}_all_equal", "corner", tulq=fields))
    return merge(*segs)


# ---------------------------------------------------------------- layernorm

def layernorm_segment(x, gamma, beta, shift: int, op: str, source: str, in_shift=None,
                      out_width: int = 8) -> dict[str, np.ndarray]:
    x = np.asarray(x, np.int64)
    in_shift = np.zeros(x.shape[1], np.int64) if in_shift is None else np.asarray(in_shift, np.int64)
    return {"x": x.ravel(), "gamma": np.asarray(gamma, np.int64), "beta": np.asarray(beta, np.int64),
            "in_shift": in_shift,
            "seg_rows": np.array([x.shape[0]]), "seg_len": np.array([x.shape[1]]),
            "seg_shift": np.array([shift]), "seg_width": np.array([out_width]), "seg_op": np.array([op]),
            "seg_source": np.array([source])}


def layernorm_vectors(p: dict, n_random: int = 10_000, seed: int = SEED) -> dict[str, np.ndarray]:
    """Rows of random width and spread (tiny to full-range variance, offset means), affine tables
    that map the normalized value onto the output grid; corners: zero-variance rows (equal values,
    at both rails), one outlier channel, alternating rails (largest variance), n = 1, the widest row."""
    rng = np.random.default_rng(seed)
    lo, hi = intops.int_range(p["in_bits"])
    glo, ghi = intops.int_range(p["gamma_bits"])
    blo, bhi = intops.int_range(p["beta_bits"])
    max_n = p["max_n"]
    frac = p["frac_bits"]
    out_bits = p["out_bits"]

    def affine(n):  # gamma ~ 2**frac on the normalized grid, shift brings it to a few output steps
        gamma = rng.integers(-(1 << 12), 1 << 12, n)
        beta = rng.integers(-(1 << 16), 1 << 16, n)
        shift = frac + 12 - out_bits + int(rng.integers(-2, 3))
        return gamma, beta, max(0, shift)

    segs, total = [], 0
    while total < n_random:
        # a wide row buffer (an exported unit holds 1024 channels): half the rows short, for more shapes
        short = max_n > SHORT_N and rng.random() < 0.5
        n = int(rng.integers(1, (SHORT_N if short else max_n) + 1))
        rows = int(rng.integers(1, 6))
        spread = 1 << int(rng.integers(0, p["in_bits"]))
        centre = int(rng.integers(lo, hi + 1))
        x = np.clip(centre + rng.integers(-spread, spread + 1, (rows, n)), lo, hi)
        width = int(rng.choice(sorted({min(4, out_bits), min(8, out_bits), out_bits})))
        gamma, beta, shift = affine(n)
        shift = max(0, shift - (out_bits - width))  # keep the output near its grid whatever its width
        segs.append(layernorm_segment(x, gamma, beta, shift, f"random{len(segs)}_w{width}", "random",
                                      out_width=width))
        total += rows * n
    n = max_n
    gamma, beta, shift = affine(n)
    segs.append(layernorm_segment(np.array([[5] * n, [lo] * n, [hi] * n, [0] * n]), gamma, beta, shift,
                                  "zero_variance", "corner"))
    outlier = np.zeros((2, n), np.int64)
    outlier[0, 3 % n], outlier[1, n - 1] = hi, lo
    segs.append(layernorm_segment(outlier, gamma, beta, shift, "one_outlier", "corner"))
    segs.append(layernorm_segment(np.where(np.arange(n) % 2, hi, lo)[None], gamma, beta, shift,
                                  "alternating_rails", "corner"))
    segs.append(layernorm_segment(rng.integers(lo, hi + 1, (2, n)), np.full(n, ghi), np.full(n, bhi), 0,
                                  "saturate_high", "corner", out_width=out_bits))
    segs.append(layernorm_segment(rng.integers(lo, hi + 1, (2, n)), np.full(n, glo), np.full(n, blo), 0,
                                  "saturate_low", "corner", out_width=out_bits))
    segs.append(layernorm_segment(rng.integers(lo, hi + 1, (3, 1)), [1 << frac], [7], 2, "n1", "corner"))
    segs.append(layernorm_segment(rng.integers(lo, hi + 1, (2, n)), gamma, beta, 63 if p["shift_bits"] >= 6 else 1,
                                  "huge_shift", "corner"))
    # power-of-two input factors: x << in_shift stays inside in_bits (the program's rule)
    for k in range(6):
        n = int(rng.integers(1, max_n + 1))
        sh = rng.integers(0, 4, n)
        x = rng.integers(lo >> 3, (hi >> 3) + 1, (3, n)) >> rng.integers(0, 8)
        gamma, beta, shift = affine(n)
        segs.append(layernorm_segment(x, gamma, beta, shift, f"in_shift{k}", "random", in_shift=sh))
    sh = np.full(max_n, 3)
    segs.append(layernorm_segment(np.array([[lo >> 3] * max_n, [hi >> 3] * max_n]), *affine(max_n)[:2], 4,
                                  "in_shift_rails", "corner", in_shift=sh))
    return merge(*segs)
