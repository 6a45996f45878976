"""Runs memory images on the whole accelerator RTL (``hw.accelerator``) in Verilator.

The accelerator's Verilog (cached under build/rtl like every unit's, ``rtl_tests.harness``) is built once
per description and simulator together with ``rtl_tests/dram.v``, a bench top that plays DRAM on the
memory port: it loads each image with ``$readmemh``, pulses ``start``, waits for ``done``, dumps the
image with ``$writememh`` and logs every retire. No Python runs per cycle; several images (samples) run
one after the other in one simulation.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hw import toolchain
from rtl_tests import harness

DRAM_V = Path(__file__).resolve().parent / "dram.v"
#: a C++20 binary (dram.v waits on clock edges: --timing, whose coroutines the wheel's compiler flags leave
#: out); -O3 with -O2 C++ ran no faster (40-54 k cycles/s at edge-int4 size either way), so the defaults stay
VERILATOR_FLAGS = ("--binary", "--timing", "-Wno-fatal", "-Wno-lint", "-Wno-style", "-O1",
                   "-CFLAGS", "-fcoroutines -std=c++20", "-j", "2")
SIMULATORS = ("verilator",)  #: the simulators the whole accelerator runs on
MIN_DEPTH_LOG2 = 17  #: DRAM of at least 2**17 beats: every vit-digits image, one build a config; larger images, larger


class RtlRunError(RuntimeError):
    """A simulation that did not finish: a build error, a timeout, a missing dump."""


@dataclass
class RunResult:
    """One image after its run: the image, the total cycles (``end``'s retire) and each retire's (pc, cycles)."""

    image: np.ndarray
    cycles: int
    retires: list[tuple[int, int]]


@dataclass
class Build:
    """A simulator build of the accelerator for one description: the executable and how long it took."""

    sim: str
    path: Path
    seconds: float  #: this call: the Verilog (unless cached) and the compile (unless cached)
    compile_s: float  #: the simulator compile of this build, when it was made
    depth: int


def _depth(n_beats: int) -> int:
    return 1 << max(MIN_DEPTH_LOG2, (n_beats - 1).bit_length())


def build(accel, sim: str = "verilator", n_beats: int = 1) -> Build:
    """The simulator build (Verilator) for ``accel`` whose DRAM holds ``n_beats`` (cached by the description, the
    hw/ source, the bench top, the DRAM depth and the flags)."""
    from hw.accelerator import Accelerator

    if sim not in SIMULATORS:
        raise RtlRunError(f"the accelerator runs on {', '.join(SIMULATORS)}, not {sim!r} (Icarus 11 did not finish a "
                          "40-cycle image in 5 minutes; it warns that part selects make always_comb blocks sensitive "
                          "to whole vectors)")
    toolchain.setup_simulator(sim)
    depth = _depth(n_beats)
    params = {"accel": {k: v for k, v in asdict(accel).items() if k != "source"}}
    dut = Accelerator.from_accel(accel)
    t0 = time.perf_counter()
    src = harness.verilog_file(dut, "accelerator", params)
    key = hashlib.sha256(json.dumps([src.name, DRAM_V.read_text(), depth, VERILATOR_FLAGS]).encode()).hexdigest()[:12]
    out = harness.BUILD / f"accelerator-{sim}-{key}"
    exe = out / "Vtb_accelerator"
    with harness._locked(out):
        if not exe.exists():
            t1 = time.perf_counter()
            _compile(sim, src, out, exe, accel, depth)
            (out / "compile_s").write_text(f"{time.perf_counter() - t1:.1f}\n")
    compile_s = float((out / "compile_s").read_text()) if (out / "compile_s").exists() else 0.0
    return Build(sim, exe, time.perf_counter() - t0, compile_s, depth)


def _compile(sim: str, src: Path, out: Path, exe: Path, accel, depth: int) -> None:
    beat_bits = 8 * int(accel.dram_bytes_per_cycle)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = ["verilator", *VERILATOR_FLAGS, "--top-module", "tb_accelerator", f"-GBEAT_BITS={beat_bits}",
           f"-GDEPTH={depth}", "--Mdir", str(out), "-o", exe.name, str(DRAM_V), str(src)]
    proc = subprocess.run(["nice"] + cmd, capture_output=True, text=True)
    (out / "build.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not exe.exists():
        raise RtlRunError(f"{sim} build of the accelerator failed; log: {out / 'build.log'}\n"
                          f"{(proc.stdout + proc.stderr)[-3000:]}")


def _write_hex(path: Path, image: np.ndarray) -> None:
    """Beats as hex words, byte 0 of a beat the least significant."""
    words = image[:, ::-1]
    path.write_text("\n".join(bytes(row).hex() for row in words) + "\n")


def _read_hex(path: Path, n_beats: int, beat_bytes: int) -> np.ndarray:
    rows = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("//")]
    if len(rows) != n_beats:
        raise RtlRunError(f"{path}: {len(rows)} beats dumped, expected {n_beats}")
    out = np.zeros((n_beats, beat_bytes), np.uint8)
    for i, row in enumerate(rows):
        if any(ch in row for ch in "xXzZ"):
            raise RtlRunError(f"{path}: beat {i} holds undefined bits ({row})")
        out[i] = np.frombuffer(bytes.fromhex(row.rjust(2 * beat_bytes, "0")), np.uint8)[::-1]
    return out


def run_images(accel, images: list[np.ndarray], *, sim: str = "verilator", max_cycles: int = 50_000_000,
               keep: Path | None = None) -> tuple[list[RunResult], dict]:
    """Run each image (np.uint8 ``(n_beats, beat_bytes)``, all one shape) from a ``start`` to ``done``
    in one simulation; return their results and ``{"build_s", "compile_s", "run_s", "cycles",
    "cycles_per_s"}`` (the cycles of all images together, per second of the simulation run)."""
    beat_bytes = int(accel.dram_bytes_per_cycle)
    shapes = {np.asarray(im).shape for im in images}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[1] != beat_bytes:
        raise ValueError(f"images must share one shape (n_beats, {beat_bytes}), got {sorted(shapes)}")
    n_beats = next(iter(shapes))[0]
    b = build(accel, sim, n_beats)
    work = Path(tempfile.mkdtemp(prefix="accel-", dir=keep)) if keep else Path(tempfile.mkdtemp(prefix="accel-"))
    for s, im in enumerate(images):
        _write_hex(work / f"image_{s}.hex", np.asarray(im, np.uint8))
    args = [f"+dir={work}", f"+samples={len(images)}", f"+beats={n_beats}", f"+max_cycles={max_cycles}"]
    cmd = [str(b.path)] + args
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    run_s = time.perf_counter() - t0
    results = _collect(work, len(images), n_beats, beat_bytes, proc)
    if keep is None:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(r.cycles for r in results)
    return results, {"build_s": round(b.seconds, 1), "compile_s": b.compile_s, "run_s": round(run_s, 2),
                     "cycles": total, "cycles_per_s": round(total / run_s) if run_s else 0}


def _collect(work: Path, samples: int, n_beats: int, beat_bytes: int, proc) -> list[RunResult]:
    log = work / "retire.log"
    lines = log.read_text().split("\n") if log.exists() else []
    retires: list[list[tuple[int, int]]] = [[] for _ in range(samples)]
    for ln in filter(None, lines):
        parts = ln.split()
        if parts[0] == "timeout":
            raise RtlRunError(f"sample {parts[1]}: no done after {parts[3]} cycles (pc {parts[2]})")
        retires[int(parts[0])].append((int(parts[1]), int(parts[2])))
    results = []
    for s in range(samples):
        dump = work / f"out_{s}.hex"
        if not dump.exists():
            raise RtlRunError(f"sample {s}: no dump (simulator exit {proc.returncode}): "
                              f"{(proc.stdout + proc.stderr)[-2000:]}")
        cycles = retires[s][-1][1] if retires[s] else 0
        results.append(RunResult(_read_hex(dump, n_beats, beat_bytes), cycles, retires[s]))
    return results


def run_image(accel, image: np.ndarray, *, sim: str = "verilator", max_cycles: int = 50_000_000) -> RunResult:
    """One image on the accelerator RTL: the image after ``done``, the total cycles, the retires."""
    return run_images(accel, [image], sim=sim, max_cycles=max_cycles)[0][0]





class ImageBuilder:
    """A memory image by hand: ``instr_slots`` instructions from beat 0 on, then data items, each beat-aligned
    (``sim.isa``: ABUF words of ``V`` int32, WBUF words of ``V`` weights, table entries, little-endian)."""

    def __init__(self, accel, instr_slots: int):
        from sim import isa

        self.accel = accel
        self.v = accel.array.rows
        self.bb = int(accel.dram_bytes_per_cycle)
        self.ib = isa.instr_beats(self.bb)
        self.instrs: list = []
        self.slots = instr_slots
        self.beats: list[bytes] = [b""] * (instr_slots * self.ib)

    def _place(self, chunks: list[bytes]) -> int:
        at = len(self.beats)
        for chunk in chunks:
            self.beats += [chunk[i:i + self.bb] for i in range(0, len(chunk), self.bb)]
        return at

    def items(self, values, bits: int) -> int:
        """Items of ``bits`` bits (non-negative ints), each on its own beats; returns the first beat."""
        from sim import isa

        n = isa.beats(bits, self.bb) * self.bb
        return self._place([int(x).to_bytes(n, "little") for x in values])

    def lanes(self, rows, bits: int) -> int:
        """Rows of ``V`` lanes of ``bits`` bits (two's complement), lane 0 in the low bits, as items."""
        mask = (1 << bits) - 1
        words = [sum((int(x) & mask) << (bits * i) for i, x in enumerate(row)) for row in np.asarray(rows)]
        return self.items(words, self.v * bits)

    def abuf_words(self, rows) -> int:
        return self.lanes(rows, 32)

    def reserve(self, n_beats: int) -> int:
        return self._place([bytes(self.bb)] * n_beats)

    def add(self, instr) -> int:
        """Append an instruction; returns its index (its pc)."""
        if len(self.instrs) == self.slots:
            raise ValueError(f"image: more than {self.slots} instructions")
        self.instrs.append(instr)
        return len(self.instrs) - 1

    def image(self) -> np.ndarray:
        from sim import isa

        beats = list(self.beats)
        for k, instr in enumerate(self.instrs):
            word = isa.encode(instr).to_bytes(self.ib * self.bb, "little")
            for b in range(self.ib):
                beats[k * self.ib + b] = word[b * self.bb:(b + 1) * self.bb]
        out = np.zeros((len(beats), self.bb), np.uint8)
        for i, chunk in enumerate(beats):
            out[i, :len(chunk)] = np.frombuffer(chunk, np.uint8)
        return out

    def read_abuf_words(self, image: np.ndarray, dram: int, count: int) -> np.ndarray:
        """``count`` ABUF words stored at beat ``dram`` of ``image``, as (count, V) int64."""
        from sim import isa

        per = isa.beats(32 * self.v, self.bb)
        raw = image[dram:dram + count * per].reshape(count, per * self.bb)[:, :4 * self.v]
        return raw.copy().view("<i4").astype(np.int64)
