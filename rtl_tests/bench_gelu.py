"""cocotb bench of hw.gelu.Gelu against sim.intops.gelu.

One segment per GELU op: its table is loaded, its inputs stream through at
full rate, and the clock edges from the first element in to the last one out
must equal ``sim.timing.stream_cycles``.
"""

from __future__ import annotations

import cocotb
import numpy as np

from rtl_tests.bench_common import Clocked, Scoreboard, load, pack, unpack
from sim import intops, timing


@cocotb.test()
async def gelu_bench(dut):
    cfg, v = load()
    p = cfg["params"]
    lanes, in_bits, out_bits = p["lanes"], p["in_bits"], p["out_bits"]
    clk = Clocked(dut)
    await clk.start(cfg["inputs"])
    sb = Scoreboard("gelu", cfg["sim"])
    starts = np.concatenate([[0], np.cumsum(v["seg_len"])])
    for s in range(len(v["seg_len"])):
        x = v["x"][starts[s]:starts[s + 1]]
        table = v["seg_table"][s]
        for a in range(1 << in_bits):  # table address a holds the entry of input a - 2**(in_bits-1)
            dut.tbl_we.value = 1
            dut.tbl_addr.value = a
            dut.tbl_data.value = int(table[a]) & ((1 << out_bits) - 1)
            await clk.tick()
        dut.tbl_we.value = 0
        beats = -(-len(x) // lanes)
        xb = np.concatenate([x, np.zeros(beats * lanes - len(x), np.int64)]).reshape(beats, lanes)
        got: list[int] = []
        first_in = last_out = None
        b = 0
        while len(got) < beats * lanes:
            if b < beats:
                dut.i_valid.value = 1
                dut.i_x.value = pack(xb[b], in_bits)
                if first_in is None:
                    first_in = clk.cycle
                b += 1
            else:
                dut.i_valid.value = 0
            await clk.sample()
            if dut.o_valid.value:
                got += unpack(int(dut.o_y.value), out_bits, lanes, True)
                last_out = clk.cycle
            await clk.tick()
            if clk.cycle - first_in > beats + 4 * p["latency"] + 16:
                break
        op = str(v["seg_op"][s])
        expected = intops.gelu(x, table, in_bits)
        sb.compare(op, str(v["seg_source"][s]), {"x": x}, expected, np.asarray(got[: len(x)], np.int64))
        model = timing.stream_cycles(len(x), lanes, p["latency"])
        sb.check_cycles(op, -1 if last_out is None else last_out - first_in, model)
    sb.finish(p)
