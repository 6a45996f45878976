"""cocotb bench of hw.requant.Requantizer against sim.intops.requantize.

Vectors come in segments, one per requant op (a random table, a corner
case, a traced program op): the segment's (M, shift) table is loaded, then
its elements stream through at full rate, and the clock edges from the first
element in to the last one out must equal ``sim.timing.stream_cycles``.
"""

from __future__ import annotations

import cocotb
import numpy as np

from rtl_tests.bench_common import Clocked, Scoreboard, load, pack, unpack
from sim import intops, timing


@cocotb.test()
async def requant_bench(dut):
    cfg, v = load()
    p = cfg["params"]
    lanes, in_bits, out_bits = p["lanes"], p["in_bits"], p["out_bits"]
    ch_bits = max(1, (p["channels"] - 1).bit_length())
    clk = Clocked(dut)
    await clk.start(cfg["inputs"])
    sb = Scoreboard("requant", cfg["sim"])
    starts = np.concatenate([[0], np.cumsum(v["seg_len"])])
    for s in range(len(v["seg_len"])):
        x = v["x"][starts[s]:starts[s + 1]]
        ch = v["ch"][starts[s]:starts[s + 1]]
        tm, ts, tz = v["seg_m"][s], v["seg_shift"][s], v["seg_zp"][s]
        width, sgn = int(v["seg_width"][s]), bool(v["seg_signed"][s])
        for c in range(len(ts)):  # load this op's table
            dut.tbl_we.value = 1
            dut.tbl_addr.value = c
            dut.tbl_shift.value = int(ts[c])
            dut.tbl_zp.value = int(tz[c]) & ((1 << (out_bits + 1)) - 1)
            dut.tbl_m.value = int(tm[c])
            await clk.tick()
        dut.tbl_we.value = 0
        dut.out_width.value = width
        dut.out_signed.value = int(sgn)
        beats = -(-len(x) // lanes)
        pad = beats * lanes - len(x)
        xb = np.concatenate([x, np.zeros(pad, np.int64)]).reshape(beats, lanes)
        cb = np.concatenate([ch, np.zeros(pad, np.int64)]).reshape(beats, lanes)
        got: list[int] = []
        first_in = last_out = None
        b = 0
        while len(got) < beats * lanes:
            if b < beats:
                dut.i_valid.value = 1
                dut.i_x.value = pack(xb[b], in_bits)
                dut.i_ch.value = pack(cb[b], ch_bits)
                if first_in is None:
                    first_in = clk.cycle
                b += 1
            else:
                dut.i_valid.value = 0
            await clk.sample()
            if dut.o_valid.value:
                got += unpack(int(dut.o_y.value), out_bits, lanes, sgn)
                last_out = clk.cycle
            await clk.tick()
            if clk.cycle - first_in > beats + 4 * p["latency"] + 16:
                break  # the unit lost outputs; the scoreboard reports the shortfall
        got_arr = np.asarray(got[: len(x)], dtype=np.int64)
        expected = intops.requantize(x, tm[ch], ts[ch], width, tz[ch], sgn)
        op = str(v["seg_op"][s])
        sb.compare(op, str(v["seg_source"][s]), {"x": x, "channel": ch, "m": tm[ch], "shift": ts[ch],
                                                  "zero_point": tz[ch]}, expected, got_arr)
        if last_out is not None:
            sb.check_cycles(op, last_out - first_in, timing.stream_cycles(len(x), lanes, p["latency"]))
        else:
            sb.check_cycles(op, -1, timing.stream_cycles(len(x), lanes, p["latency"]))
    sb.finish(p)
