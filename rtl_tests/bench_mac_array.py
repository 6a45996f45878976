"""cocotb bench of hw.mac_array.MacArray against sim.intops.linear (matmul_log2, xnor_popcount, and_popcount).

The bench is the array's controller: it tiles each GEMM ``x @ w.T + bias``
([m, k] x [n, k]) into ``ceil(k/rows) * ceil(n/cols)`` weight folds (zero
padding the edges), offers the weight and input beats as fast as the array
takes them, and checks the results and the clock edges from the first weight
beat to the last output against ``sim.timing.gemm_cycles``. A binary GEMM
(bits in x and w) packs ``pack`` reduction indices into each lane, so it folds
``rows * pack`` of them at a time (``sim.timing.binary_gemm_cycles``); in xnor
mode a zero-padded index adds +1, which comes off the bias.
"""

from __future__ import annotations

import cocotb
import numpy as np

from rtl_tests.bench_common import Clocked, Scoreboard, load, pack, unpack
from sim import intops, timing


XNOR, AND = 3, 4  #: the binary modes' g_kind (sim.ops.BINARY_BENCH_MODE)


def _pack_bits(bits: np.ndarray, pack: int) -> np.ndarray:
    """[..., K * pack] bits -> [..., K] lanes, bit j of lane i holding index ``i * pack + j``."""
    lanes = bits.reshape(bits.shape[:-1] + (-1, pack))
    return (lanes << np.arange(pack)).sum(axis=-1)


def _folds(x, w, b, rows, cols, mode, pack):
    """The beat sequence of one GEMM: per fold, its weight beats then its input beats."""
    m, k = x.shape
    n = w.shape[0]
    if mode >= XNOR:  # binary: pad to whole lanes and folds, pack the lanes
        kb = -(-k // (rows * pack)) * rows * pack
        if mode == XNOR:
            b = b - (kb - k)  # a padded index (0 against 0) is a +1 product
        x, w = (_pack_bits(np.pad(t, ((0, 0), (0, kb - k))), pack) for t in (x, w))
        k = kb // pack
    kf, nf = -(-k // rows), -(-n // cols)
    xp = np.zeros((m, kf * rows), np.int64)
    xp[:, :k] = x
    wp = np.zeros((nf * cols, kf * rows), np.int64)
    wp[:n, :k] = w
    bp = np.zeros(nf * cols, np.int64)
    bp[:n] = b
    for j in range(nf):
        for i in range(kf):
            wt = wp[j * cols:(j + 1) * cols, i * rows:(i + 1) * rows].T  # [rows, cols]
            yield ("w", wt, i == 0, i == kf - 1, bp[j * cols:(j + 1) * cols], m, mode)
            yield ("x", xp[:, i * rows:(i + 1) * rows])


@cocotb.test()
async def mac_array_bench(dut):
    cfg, v = load()
    p = cfg["params"]
    rows, cols, a_bits, w_bits, acc_bits = p["rows"], p["cols"], p["act_bits"], p["weight_bits"], p["acc_bits"]
    binary_pack = timing.binary_pack(a_bits, w_bits)
    clk = Clocked(dut)
    await clk.start(cfg["inputs"])
    sb = Scoreboard("mac_array", cfg["sim"])
    xo = wo = bo = 0
    for g in range(len(v["g_m"])):
        m, k, n = int(v["g_m"][g]), int(v["g_k"][g]), int(v["g_n"][g])
        x = v["x"][xo:xo + m * k].reshape(m, k)
        w = v["w"][wo:wo + n * k].reshape(n, k)
        b = v["b"][bo:bo + n]
        xo, wo, bo = xo + m * k, wo + n * k, bo + n
        mode = int(v["g_kind"][g])  # 0: x * w, 1: log2 codes x V, 2: base sqrt(2) codes x V, 3: xnor, 4: and
        beats = []
        for fold in _folds(x, w, b, rows, cols, mode, binary_pack):
            if fold[0] == "w":
                _, wt, first, last, bias, mm, mode = fold
                for r in range(rows):
                    beats.append(("w", pack(wt[r], w_bits), int(first), int(last), pack(bias, acc_bits), mm,
                                  int(mode in (1, 2)), int(mode == 2), int(mode >= XNOR), int(mode == AND)))
            else:
                beats += [("x", pack(row, a_bits)) for row in fold[1]]
        n_out = m * -(-n // cols)
        outs: list[list[int]] = []
        first_in = last_out = None
        i = 0
        model = (timing.binary_gemm_cycles(m, k, n, rows, cols, binary_pack) if mode >= XNOR
                 else timing.gemm_cycles(m, k, n, rows, cols))
        limit = 4 * model + 64
        start = clk.cycle
        while len(outs) < n_out and clk.cycle - start < limit:
            beat = beats[i] if i < len(beats) else None
            dut.w_valid.value = int(beat is not None and beat[0] == "w")
            dut.x_valid.value = int(beat is not None and beat[0] == "x")
            if beat is not None and beat[0] == "w":
                _, dut.w_row.value, dut.w_first.value, dut.w_last.value, dut.bias.value, dut.m.value = beat[:6]
                if p["log2"]:
                    dut.w_log2.value, dut.w_sqrt2.value = beat[6:8]
                if p.get("binary"):
                    dut.w_binary.value, dut.w_and.value = beat[8:]
            elif beat is not None:
                dut.x_vec.value = beat[1]
            await clk.sample()
            if beat is not None and int((dut.w_ready if beat[0] == "w" else dut.x_ready).value):
                if first_in is None:
                    first_in = clk.cycle
                i += 1
            if dut.o_valid.value:
                outs.append(unpack(int(dut.o_acc.value), acc_bits, cols, True))
                last_out = clk.cycle
            await clk.tick()
        dut.w_valid.value = 0
        dut.x_valid.value = 0
        nf = -(-n // cols)
        got = np.zeros((m, nf * cols), np.int64)
        if len(outs) == n_out:
            for j in range(nf):
                got[:, j * cols:(j + 1) * cols] = np.asarray(outs[j * m:(j + 1) * m])
        else:
            got = np.zeros((len(outs),), np.int64)
        got = got[:, :n] if got.ndim == 2 else got
        if mode >= XNOR:  # x and w hold bits
            product = intops.xnor_popcount if mode == XNOR else intops.and_popcount
            expected = intops.saturate(product(x, w, b), acc_bits)
        elif mode:  # x holds codes, w holds V transposed
            expected = intops.matmul_log2(x, w.T, p["code_bits"], acc_bits, sqrt2=mode == 2)
        else:
            expected = intops.linear(x, w, b, acc_bits)
        op = str(v["g_op"][g])
        sb.compare(op, str(v["g_source"][g]), {"x": x, "w": np.broadcast_to(w, (m,) + w.shape),
                                                "bias": np.broadcast_to(b, (m, n))}, expected, got, axis_items=n)
        sb.check_cycles(f"{op} m={m} k={k} n={n}", -1 if last_out is None else last_out - first_in, model)
    sb.finish(p)
