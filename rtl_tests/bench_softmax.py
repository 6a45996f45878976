"""cocotb bench of hw.softmax.SoftmaxLog2 against sim.intops.softmax_log2 and (TULQ segments)
sim.intops.softmax_tulq.

Rows come in segments of one length (one softmax op, or one random shape),
fed back to back as fast as the unit takes them. Each row's clock edges from
its first beat in to its last code out, and each segment's total, must equal
``sim.timing.softmax_row_cycles`` (with ``tulq`` for a TULQ segment).
"""

from __future__ import annotations

import cocotb
import numpy as np

from rtl_tests.bench_common import Clocked, Scoreboard, load, pack, unpack
from sim import intops, timing, widths


@cocotb.test()
async def softmax_bench(dut):
    cfg, v = load()
    p = cfg["params"]
    lanes, in_bits, code_bits = p["lanes"], p["in_bits"], p["code_bits"]
    out_bits = max(code_bits, widths.MAX_TULQ_GRID_BITS + 1)  # o_q's lanes: log2 codes or TULQ levels
    # trace files written before TULQ hold log2 segments only
    no_tulq = np.zeros_like(v["seg_rows"])
    seg_tulq, knees, steps, grids = (v.get(k, no_tulq) for k in ("seg_tulq", "seg_knee", "seg_step_bits",
                                                                    "seg_grid_bits"))
    clk = Clocked(dut)
    await clk.start(cfg["inputs"])
    sb = Scoreboard("softmax", cfg["sim"])
    off = 0
    for s in range(len(v["seg_rows"])):
        n_rows, length = int(v["seg_rows"][s]), int(v["seg_len"][s])
        t = v["t"][off:off + n_rows * length].reshape(n_rows, length)
        mask = v["mask"][off:off + n_rows * length].reshape(n_rows, length)
        off += n_rows * length
        sqrt2, tulq = bool(v["seg_sqrt2"][s]), bool(seg_tulq[s])
        levels = int(knees[s]), int(steps[s]), int(grids[s])
        dut.sqrt2.value, dut.tulq.value = int(sqrt2), int(tulq)
        dut.knee.value, dut.step_bits.value, dut.grid_bits.value = levels
        beats_per_row = -(-length // lanes)
        pad = beats_per_row * lanes - length
        tp = np.pad(t, ((0, 0), (0, pad)))
        mp = np.pad(mask, ((0, 0), (0, pad)))  # padding positions are masked out
        beats = [(pack(tp[r, b * lanes:(b + 1) * lanes], in_bits), pack(mp[r, b * lanes:(b + 1) * lanes], 1),
                  int(b == beats_per_row - 1)) for r in range(n_rows) for b in range(beats_per_row)]
        row_in: list[int] = []
        row_out: list[int] = []
        codes: list[int] = []
        i = 0
        model_row = timing.softmax_row_cycles(length, lanes, p["latency"], tulq=tulq)
        limit = clk.cycle + 2 * n_rows * model_row + 64
        while len(row_out) < n_rows and clk.cycle < limit:
            if i < len(beats):
                dut.i_valid.value = 1
                dut.i_t.value, dut.i_mask.value, dut.i_last.value = beats[i]
            else:
                dut.i_valid.value = 0
            await clk.sample()
            if i < len(beats) and int(dut.i_ready.value):
                if i % beats_per_row == 0:
                    row_in.append(clk.cycle)
                i += 1
            if dut.o_valid.value:
                codes += unpack(int(dut.o_q.value), out_bits, lanes, False)
                if dut.o_last.value:
                    row_out.append(clk.cycle)
            await clk.tick()
        dut.i_valid.value = 0
        op = str(v["seg_op"][s])
        got = np.asarray(codes, np.int64)
        if got.size == n_rows * beats_per_row * lanes:
            got = got.reshape(n_rows, -1)[:, :length]
        if tulq:
            expected = intops.softmax_tulq(t, mask.astype(bool), *levels, p["frac_bits"], p["exp_bits"], sqrt2=sqrt2)
        else:
            expected = intops.softmax_log2(t, mask.astype(bool), code_bits, p["frac_bits"], p["exp_bits"],
                                           sqrt2=sqrt2)
        sb.compare(op, str(v["seg_source"][s]), {"t": t, "mask": mask}, expected, got, axis_items=length)
        spans = [o - i_ for i_, o in zip(row_in, row_out)]
        worst = max(spans, key=lambda x: abs(x - model_row)) if spans else -1
        sb.check_cycles(f"{op} row (length {length})", worst, model_row)
        total = row_out[-1] - row_in[0] if len(row_out) == n_rows else -1
        sb.check_cycles(f"{op} {n_rows} rows back to back", total, n_rows * model_row)
    sb.finish(p)
