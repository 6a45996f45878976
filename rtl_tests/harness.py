"""Runs one cocotb bench on one simulator and returns its summary.

The pytest entry points and ``rtl_tests.regress`` both come through here:
the unit is converted to Verilog (cached by its parameters and the hw/ source),
built with ``cocotb_tools.runner``, and run with the bench module
``rtl_tests.bench_<unit>``. Vectors go to the bench as ``vectors.npz`` with
the unit's parameters in ``config.json``; the bench writes ``summary.json``
(vectors, mismatches with their details, cycles measured and modelled).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hw import toolchain

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "rtl"
#: the benches' time goes to cocotb, not to the model: C++ at -O0 builds the 16x16 int4 array in ~34 s instead
#: of ~113 s at Verilator's default -Os and runs its bench in ~18 s instead of ~12 s (-O1 takes minutes on the
#: symbol table's constructor)
VERILATOR_ARGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-O2", "-CFLAGS", "-O0"]


def _hw_digest() -> str:
    h = hashlib.sha256()
    for path in sorted((REPO / "hw").glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


@contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (a build directory): concurrent test runs on one checkout build in turn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def verilog_file(component, name: str, params: dict) -> Path:
    """Write (or reuse) the Verilog of ``component`` under build/rtl and return its path."""
    from hw.verilog import to_verilog

    key = hashlib.sha256(json.dumps([name, params, _hw_digest()], sort_keys=True).encode()).hexdigest()[:16]
    path = BUILD / "verilog" / f"{name}_{key}.v"
    if path.exists():
        component._MustUse__silence = True  # Amaranth's flag for "not elaborated on purpose": the cached file is it
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(to_verilog(component, name, for_simulation=True))
        tmp.replace(path)
    return path


def input_ports(component) -> list[str]:
    """The unit's input ports (its signature's ``In`` members): the bench drives each one from reset, so an
    input a unit gains starts at 0 in every bench that does not know it yet."""
    from amaranth.lib import wiring

    return [name for name, member in component.signature.members.items()
            if member.is_port and member.flow == wiring.In]


def run_bench(unit: str, component, params: dict, vectors: dict[str, np.ndarray], sim: str,
              config: dict | None = None, tag: str = "") -> dict:
    """Build ``component`` for ``sim``, run ``rtl_tests.bench_<unit>`` on ``vectors`` and return its summary."""
    from cocotb_tools.runner import get_runner

    toolchain.setup_simulator(sim)
    t_verilog = time.perf_counter()
    src = verilog_file(component, unit, params)
    build_args = VERILATOR_ARGS if sim == "verilator" else []
    # the simulator build is keyed by the Verilog text and the flags, not by the hw/ source: an edit to hw/
    # that leaves this unit's Verilog as it was re-converts it but builds nothing
    key = hashlib.sha256(json.dumps([src.read_text(), sim, build_args]).encode()).hexdigest()[:16]
    build_dir = BUILD / f"{unit}-{sim}-{key}"
    # one run directory per process, kept only when the bench fails (for its logs)
    test_dir = BUILD / "runs" / f"{unit}{('-' + tag) if tag else ''}-{sim}-{os.getpid()}"
    test_dir.mkdir(parents=True, exist_ok=True)
    summary_path = test_dir / "summary.json"
    summary_path.unlink(missing_ok=True)
    np.savez(test_dir / "vectors.npz", **vectors)
    (test_dir / "config.json").write_text(json.dumps({"unit": unit, "sim": sim, "params": params,
                                                      "inputs": input_ports(component), **(config or {})},
                                                     indent=1))
    runner = get_runner(sim)
    t0 = time.perf_counter()
    with _locked(build_dir):
        runner.build(sources=[src], hdl_toplevel=unit, build_dir=build_dir, timescale=("1ns", "1ps"),
                     build_args=build_args, log_file=build_dir / "build.log")
    env = {"PTQ2RTL_BENCH_DIR": str(test_dir),
           "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in sys.path if p])}
    t1 = time.perf_counter()
    try:
        runner.test(test_module=f"rtl_tests.bench_{unit}", hdl_toplevel=unit, build_dir=build_dir,
                    test_dir=test_dir, extra_env=env, timescale=("1ns", "1ps"),
                    log_file=test_dir / "sim.log")
    except SystemExit:  # the runner exits on a failed bench under pytest; the summary says why
        pass
    if not summary_path.exists():
        log = (test_dir / "sim.log").read_text(errors="replace")[-4000:] if (test_dir / "sim.log").exists() else ""
        raise RuntimeError(f"bench {unit} on {sim} wrote no summary; log tail:\n{log}")
    summary = json.loads(summary_path.read_text())
    summary["run_dir"] = str(test_dir)
    # seconds of the Verilog (0 when cached), the simulator build (0-ish when cached; it includes waiting for
    # another process's build of the same unit) and the bench itself
    summary["seconds"] = {"verilog": round(t0 - t_verilog, 1), "build": round(t1 - t0, 1),
                          "run": round(time.perf_counter() - t1, 1)}
    if summary["mismatches"] == 0 and summary["cycles_ok"]:
        shutil.rmtree(test_dir, ignore_errors=True)
    return summary


def describe_failures(summary: dict) -> str:
    """One readable paragraph per problem of a summary, for assertion messages."""
    lines = []
    for mm in summary.get("mismatch_details", []):
        lines.append(f"{summary['unit']} op={mm.get('op')} inputs={mm.get('inputs')} "
                     f"expected={mm.get('expected')} got={mm.get('got')}")
    for c in summary.get("cycles", []):
        if c["measured"] != c["model"]:
            lines.append(f"{summary['unit']} cycles {c['what']}: measured {c['measured']}, model {c['model']}")
    if lines and summary.get("run_dir"):
        lines.append(f"(bench logs: {summary['run_dir']}/sim.log)")
    return "\n".join(lines)
