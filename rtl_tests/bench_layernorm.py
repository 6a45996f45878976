"""cocotb bench of hw.layernorm.LayerNorm against sim.intops.layernorm.

Rows come in segments sharing one (gamma, beta, shift) and one width: the
segment's affine table is loaded, then its rows are fed back to back as fast
as the unit takes them. Each row's clock edges from its first beat in to its
last result out, and each segment's total, must equal
``sim.timing.layernorm_row_cycles``.
"""

from __future__ import annotations

import cocotb
import numpy as np

from rtl_tests.bench_common import Clocked, Scoreboard, load, pack, unpack
from sim import intops, timing


@cocotb.test()
async def layernorm_bench(dut):
    cfg, v = load()
    p = cfg["params"]
    lanes, in_bits, out_bits = p["lanes"], p["in_bits"], p["out_bits"]
    clk = Clocked(dut)
    await clk.start(cfg["inputs"])
    sb = Scoreboard("layernorm", cfg["sim"])
    off = aoff = 0
    for s in range(len(v["seg_rows"])):
        n_rows, n = int(v["seg_rows"][s]), int(v["seg_len"][s])
        x = v["x"][off:off + n_rows * n].reshape(n_rows, n)
        gamma, beta, in_shift = v["gamma"][aoff:aoff + n], v["beta"][aoff:aoff + n], v["in_shift"][aoff:aoff + n]
        off, aoff = off + n_rows * n, aoff + n
        shift = int(v["seg_shift"][s])
        beats_per_row = -(-n // lanes)
        pad = beats_per_row * lanes - n
        gp, bp, sp = np.pad(gamma, (0, pad)), np.pad(beta, (0, pad)), np.pad(in_shift, (0, pad))
        for b in range(beats_per_row):
            dut.tbl_we.value = 1
            dut.tbl_addr.value = b
            dut.tbl_gamma.value = pack(gp[b * lanes:(b + 1) * lanes], p["gamma_bits"])
            dut.tbl_beta.value = pack(bp[b * lanes:(b + 1) * lanes], p["beta_bits"])
            dut.tbl_in_shift.value = pack(sp[b * lanes:(b + 1) * lanes], 2)
            await clk.tick()
        dut.tbl_we.value = 0
        dut.n.value = n
        dut.shift.value = shift
        width = int(v["seg_width"][s])
        dut.out_width.value = width
        xp = np.pad(x, ((0, 0), (0, pad)), constant_values=12345 % (1 << (in_bits - 1)))  # padding must not count
        beats = [(pack(xp[r, b * lanes:(b + 1) * lanes], in_bits), int(b == beats_per_row - 1))
                 for r in range(n_rows) for b in range(beats_per_row)]
        row_in: list[int] = []
        row_out: list[int] = []
        ys: list[int] = []
        i = 0
        model_row = timing.layernorm_row_cycles(n, lanes, p["latency"])
        limit = clk.cycle + 2 * n_rows * model_row + 64
        while len(row_out) < n_rows and clk.cycle < limit:
            if i < len(beats):
                dut.i_valid.value = 1
                dut.i_x.value, dut.i_last.value = beats[i]
            else:
                dut.i_valid.value = 0
            await clk.sample()
            if i < len(beats) and int(dut.i_ready.value):
                if i % beats_per_row == 0:
                    row_in.append(clk.cycle)
                i += 1
            if dut.o_valid.value:
                ys += unpack(int(dut.o_y.value), out_bits, lanes, True)
                if dut.o_last.value:
                    row_out.append(clk.cycle)
            await clk.tick()
        dut.i_valid.value = 0
        op = str(v["seg_op"][s])
        got = np.asarray(ys, np.int64)
        if got.size == n_rows * beats_per_row * lanes:
            got = got.reshape(n_rows, -1)[:, :n]
        expected = intops.layernorm(x, gamma, beta, shift, width, p["frac_bits"], p["recip_bits"],
                                    in_shift=in_shift)
        sb.compare(op, str(v["seg_source"][s]), {"x": x, "gamma": np.broadcast_to(gamma, x.shape),
                                                  "beta": np.broadcast_to(beta, x.shape),
                                                  "in_shift": np.broadcast_to(in_shift, x.shape),
                                                  "shift": np.full(n_rows, shift)}, expected, got, axis_items=n)
        spans = [o - i_ for i_, o in zip(row_in, row_out)]
        worst = max(spans, key=lambda c: abs(c - model_row)) if spans else -1
        sb.check_cycles(f"{op} row (n={n})", worst, model_row)
        total = row_out[-1] - row_in[0] if len(row_out) == n_rows else -1
        sb.check_cycles(f"{op} {n_rows} rows back to back", total, n_rows * model_row)
    sb.finish(p)
