"""The GELU unit: ``sim.intops.gelu``, a ROM indexed by the signed input, ``lanes`` elements per cycle."""

from __future__ import annotations

from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.common import check_int, delay, lane_tables
from sim import timing
from sim.accel import gelu_params


class Gelu(wiring.Component):
    """``y = table[x + 2**(in_bits-1)]``: a table of ``2**in_bits`` signed ``out_bits`` entries.

    The table is computed at quantization time and loaded through ``tbl_*``
    (address = the input code plus ``2**(in_bits-1)``, i.e. its sign bit flipped).
    Each lane reads its own copy of the table. Fully pipelined, ``latency`` clock
    edges from input to output (``sim.timing.stream_cycles``).
    """

    min_latency, max_latency = timing.LATENCY_RANGE["gelu"]  #: the ROM read

    def __init__(self, in_bits: int = 8, out_bits: int = 8, lanes: int = 1, latency: int | None = None):
        unit = "Gelu"
        self.in_bits = check_int(unit, "in_bits", in_bits, 2, 12)
        self.out_bits = check_int(unit, "out_bits", out_bits, 2, 16)
        self.lanes = check_int(unit, "lanes", lanes, 1, 64)
        self.latency = check_int(unit, "latency", self.min_latency if latency is None else latency,
                                 self.min_latency, self.max_latency)
        super().__init__({
            "tbl_we": In(1),
            "tbl_addr": In(unsigned(in_bits)),
            "tbl_data": In(signed(out_bits)),
            "i_valid": In(1),
            "i_x": In(data.ArrayLayout(signed(in_bits), lanes)),
            "o_valid": Out(1),
            "o_y": Out(data.ArrayLayout(signed(out_bits), lanes)),
        })

    @classmethod
    def from_accel(cls, cfg, **overrides) -> "Gelu":
        """The GELU unit of accelerator ``cfg`` (``sim.accel.gelu_params``: table depth and entry width,
        lanes, latency), the limits ``sim.accel.check_program`` holds programs to."""
        return cls(**{**gelu_params(cfg), **overrides})

    @property
    def params(self) -> dict:
        return {"in_bits": self.in_bits, "out_bits": self.out_bits, "lanes": self.lanes, "latency": self.latency}

    def elaborate(self, platform):
        m = Module()
        reads = lane_tables(m, "table", signed(self.out_bits), 1 << self.in_bits, self.lanes,
                            {"en": self.tbl_we, "addr": self.tbl_addr, "data": self.tbl_data})
        extra = self.latency - self.min_latency
        for lane in range(self.lanes):
            rd = reads[lane]
            x = self.i_x[lane]
            m.d.comb += rd.addr.eq(x.as_unsigned() ^ (1 << (self.in_bits - 1)))  # x + 2**(in_bits-1) modulo the table size
            m.d.comb += self.o_y[lane].eq(delay(m, rd.data, extra, f"y_{lane}"))
        valid = delay(m, self.i_valid, 1, "valid")
        m.d.comb += self.o_valid.eq(delay(m, valid, extra, "valid_x"))
        return m
