"""What every cocotb bench shares: its inputs, the clock, lane packing, the scoreboard, the summary.

Cycle bookkeeping: a bench writes a unit's inputs just after a rising edge
and samples its outputs in the ReadOnly phase of the same cycle. With ``c``
the number of rising edges so far, an input written in cycle ``c`` is taken
by edge ``c + 1`` and an output seen in cycle ``c`` was made by edge ``c``;
so ``last output cycle - first input cycle`` is the number of clock edges
from the one that takes the first input to the one that makes the last
output, inclusive: the figure ``sim.timing`` gives.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

MAX_DETAILS = 10  #: mismatches reported in full; the rest are only counted


def bench_dir() -> Path:
    return Path(os.environ["PTQ2RTL_BENCH_DIR"])


def load() -> tuple[dict, dict[str, np.ndarray]]:
    d = bench_dir()
    cfg = json.loads((d / "config.json").read_text())
    with np.load(d / "vectors.npz") as z:
        vectors = {k: z[k] for k in z.files}
    return cfg, vectors


def pack(values, bits: int) -> int:
    """Lane values (element 0 in the low bits) -> one integer for an ArrayLayout port."""
    mask = (1 << bits) - 1
    word = 0
    for i, v in enumerate(values):
        word |= (int(v) & mask) << (bits * i)
    return word


def unpack(word: int, bits: int, lanes: int, is_signed: bool) -> list[int]:
    mask = (1 << bits) - 1
    out = []
    for i in range(lanes):
        v = (word >> (bits * i)) & mask
        if is_signed and v >> (bits - 1):
            v -= 1 << bits
        out.append(v)
    return out


class Clocked:
    """The clock, reset, and the cycle counter of the bookkeeping above."""

    def __init__(self, dut):
        self.dut = dut
        self.cycle = 0

    async def start(self, inputs: list[str]):
        """Start the clock, drive every input in ``inputs`` (the config's ``inputs``: all of the unit's) to 0
        (no floating inputs), reset."""
        Clock(self.dut.clk, 10, unit="ns").start()
        for name in inputs:
            getattr(self.dut, name).value = 0
        self.dut.rst.value = 1
        for _ in range(2):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0
        self.cycle = 0

    async def sample(self):
        """Move to this cycle's ReadOnly phase: outputs are settled, no more writes."""
        await ReadOnly()

    async def tick(self):
        """On to the next cycle (just after its rising edge, where inputs may be written)."""
        await RisingEdge(self.dut.clk)
        self.cycle += 1


class Scoreboard:
    """Compares what the unit gave with what ``sim.intops`` says, and counts the cycles checks."""

    def __init__(self, unit: str, sim: str):
        self.unit = unit
        self.sim = sim
        self.vectors = 0
        self.mismatches = 0
        self.details: list[dict] = []
        self.cycles: list[dict] = []
        self.sources: dict[str, int] = {}

    def compare(self, op: str, source: str, inputs: dict, expected, got, axis_items: int = 1) -> None:
        """``expected``/``got`` share their first axis (one entry per vector); ``inputs`` arrays too."""
        expected = np.asarray(expected, dtype=np.int64)
        got = np.asarray(got, dtype=np.int64)
        n = expected.shape[0] if expected.ndim else 1
        self.vectors += n * axis_items
        self.sources[source] = self.sources.get(source, 0) + n * axis_items
        if got.shape != expected.shape:
            self.mismatches += n
            self.details.append({"op": op, "inputs": "(shape)", "expected": list(expected.shape),
                                 "got": list(got.shape)})
            cocotb.log.error("%s: %s gave shape %s, expected %s", self.unit, op, got.shape, expected.shape)
            return
        bad = np.nonzero((expected != got).reshape(n, -1).any(axis=1))[0]
        self.mismatches += len(bad)
        for i in bad[: max(0, MAX_DETAILS - len(self.details))]:
            rec = {"op": op, "index": int(i),
                   "inputs": {k: np.asarray(v)[i].tolist() if np.ndim(v) else int(v) for k, v in inputs.items()},
                   "expected": expected[i].tolist(), "got": got[i].tolist()}
            self.details.append(rec)
            cocotb.log.error("MISMATCH %s op=%s inputs=%s expected=%s got=%s", self.unit, op,
                             rec["inputs"], rec["expected"], rec["got"])

    def check_cycles(self, what: str, measured: int, model: int) -> None:
        self.cycles.append({"what": what, "measured": int(measured), "model": int(model)})
        if measured != model:
            cocotb.log.error("CYCLES %s %s: measured %d, sim.timing says %d", self.unit, what, measured, model)

    @property
    def ok(self) -> bool:
        return self.mismatches == 0 and all(c["measured"] == c["model"] for c in self.cycles)

    def write(self, params: dict, extra: dict | None = None) -> dict:
        summary = {"unit": self.unit, "sim": self.sim, "params": params, "vectors": self.vectors,
                   "sources": self.sources, "mismatches": self.mismatches,
                   "mismatch_details": self.details, "cycles": self.cycles,
                   "cycles_ok": all(c["measured"] == c["model"] for c in self.cycles), **(extra or {})}
        tmp = bench_dir() / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(bench_dir() / "summary.json")
        return summary

    def finish(self, params: dict, extra: dict | None = None) -> None:
        self.write(params, extra)
        assert self.ok, (f"{self.unit}: {self.mismatches} mismatches, "
                         f"{sum(c['measured'] != c['model'] for c in self.cycles)} cycle-count disagreements")
