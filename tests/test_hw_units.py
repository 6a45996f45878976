"""hw/ on the Python side: parameter checks, sizing from accelerator descriptions, and a quick
Amaranth-simulator check of the requantizer against sim.intops (the cocotb benches do the rest)."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from hw.common import ParameterError
from hw.gelu import Gelu
from hw.layernorm import LayerNorm
from hw.mac_array import MacArray
from hw.requant import Requantizer
from hw.softmax import SoftmaxLog2
from sim import intops, widths
from sim.accel import load_accel

# components whose construction is refused, or built only to read parameters, are never elaborated
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


@pytest.mark.parametrize("make, name", [
    (lambda: Requantizer(lanes=0), "lanes"),
    (lambda: Requantizer(in_bits=64), "in_bits"),
    (lambda: Requantizer(latency=2), "latency"),
    (lambda: Requantizer(pow2=1), "pow2"),
    (lambda: Gelu(in_bits=13), "in_bits"),
    (lambda: MacArray(rows=0), "rows"),
    (lambda: MacArray(code_bits=6, act_bits=8), "code_bits"),
    (lambda: MacArray(rows=8, max_k=4), "max_k"),
    (lambda: SoftmaxLog2(latency=2), "latency"),
    (lambda: LayerNorm(latency=10), "latency"),
    (lambda: LayerNorm(steps_per_cycle=9), "steps_per_cycle"),
])
def test_bad_parameters_are_refused_naming_the_parameter(make, name):
    with pytest.raises(ParameterError, match=f"'{name}'"):
        make()


def test_latency_below_the_minimum_names_the_accepted_range():
    with pytest.raises(ParameterError, match=r"\[6, 64\]"):
        Requantizer(latency=5)


def _inspected(component):
    component._MustUse__silence = True  # built to read its parameters, never elaborated
    return component


@pytest.mark.parametrize("accel", ["edge-int4", "edge-int8"])
def test_units_from_accel_take_the_configured_sizes_and_latencies(accel):
    cfg = load_accel(accel)
    arr = _inspected(MacArray.from_accel(cfg))
    assert (arr.rows, arr.cols, arr.act_bits, arr.weight_bits) == (cfg.array.rows, cfg.array.cols,
                                                                    cfg.array.act_bits, cfg.array.weight_bits)
    assert _inspected(Requantizer.from_accel(cfg)).latency == cfg.requant.latency
    assert _inspected(Gelu.from_accel(cfg)).latency == cfg.gelu.latency
    assert _inspected(SoftmaxLog2.from_accel(cfg)).latency == cfg.softmax.latency
    ln = _inspected(LayerNorm.from_accel(cfg))
    assert ln.latency == cfg.layernorm.latency
    assert LayerNorm.latency_for(16, widths.LN_RECIP_BITS, ln.steps_per_cycle) <= ln.latency


def test_layernorm_picks_the_fewest_steps_per_cycle_that_meet_the_latency():
    # ceil(16/k) + 16 + ceil(31/k) + 21 (README, LayerNorm unit)
    assert LayerNorm.latency_for(16, 30, 1) == 16 + 16 + 31 + 21
    assert LayerNorm.latency_for(16, 30, 2) == 8 + 16 + 16 + 21
    ln = _inspected(LayerNorm.from_accel(load_accel("edge-int4")))  # latency 64
    assert ln.steps_per_cycle == 2


def _requant_in_amaranth(dut: Requantizer, table, xs, chs, width: int, sgn: bool) -> list[int]:
    got: list[int] = []

    async def bench(ctx):
        for c, (m, s, z) in enumerate(table):
            ctx.set(dut.tbl_we, 1)
            ctx.set(dut.tbl_addr, c)
            ctx.set(dut.tbl_m, m)
            ctx.set(dut.tbl_shift, s)
            ctx.set(dut.tbl_zp, z)
            await ctx.tick()
        ctx.set(dut.tbl_we, 0)
        ctx.set(dut.out_width, width)
        ctx.set(dut.out_signed, int(sgn))
        for i in range(len(xs) + dut.latency + 1):
            ctx.set(dut.i_valid, int(i < len(xs)))
            if i < len(xs):
                ctx.set(dut.i_x, [int(xs[i])])
                ctx.set(dut.i_ch, [int(chs[i])])
            await ctx.tick()
            if ctx.get(dut.o_valid):
                raw = int(ctx.get(dut.o_y)[0])
                got.append(raw - (1 << dut.out_bits) if sgn and raw >> (dut.out_bits - 1) else raw)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_requantizer_in_the_amaranth_simulator_matches_intops(data):
    width = data.draw(st.sampled_from([4, 8, 16]))
    sgn = data.draw(st.booleans())
    lo, hi = intops.int_range(width, sgn)
    table = [(data.draw(st.integers(0, (1 << 16) - 1)), data.draw(st.integers(0, 63)), data.draw(st.integers(lo, hi)))
             for _ in range(4)]
    xs = data.draw(st.lists(st.integers(-(1 << 31), (1 << 31) - 1), min_size=1, max_size=12))
    chs = data.draw(st.lists(st.integers(0, 3), min_size=len(xs), max_size=len(xs)))
    dut = Requantizer(in_bits=32, out_bits=16, lanes=1, channels=4)
    got = _requant_in_amaranth(dut, table, xs, chs, width, sgn)
    m, s, z = (np.array([t[i] for t in table]) for i in range(3))
    ch = np.array(chs)
    assert got == intops.requantize(np.array(xs), m[ch], s[ch], width, z[ch], sgn).tolist()


def test_a_sliced_memory_reads_back_its_words_a_cycle_later_from_block_ram_wide_slices():
    from amaranth.hdl import Module

    from hw.common import SlicedMemory, slice_bits

    assert [slice_bits(d) for d in (300, 512, 1024, 2048, 4096, 8192, 16384, 40000)] == [36, 36, 18, 9, 4, 2, 1, 1]
    m = Module()
    mem = SlicedMemory(m, "buf", 40, depth=2048, reads=2)
    assert [(s.depth, s.shape.width) for s in mem.slices] == [(2048, 9)] * 4 + [(2048, 4)]  # 40 bits
    assert all(s.attrs == {"no_rw_check": 1} for s in mem.slices)  # no collision logic after the block RAMs
    words = {3: 0x12_3456_789A, 2047: 0xFF_FFFF_FFFF, 1000: 0x80_0000_0001}
    got = []

    async def bench(ctx):
        for addr, word in words.items():
            ctx.set(mem.write.en, 1)
            ctx.set(mem.write.addr, addr)
            ctx.set(mem.write.data, word)
            await ctx.tick()
        ctx.set(mem.write.en, 0)
        for port, addr in zip(mem.read, (3, 1000)):
            ctx.set(port.addr, addr)
        await ctx.tick()
        got.append((ctx.get(mem.read[0].data), ctx.get(mem.read[1].data)))
        ctx.set(mem.read[0].addr, 2047)
        await ctx.tick()
        got.append((ctx.get(mem.read[0].data), ctx.get(mem.read[1].data)))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == [(words[3], words[1000]), (words[2047], words[1000])]
