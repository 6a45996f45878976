"""The errors that mean bad input from the user or a missing tool: the command line reports them in one line,
without a traceback, and exits with status 2."""

from __future__ import annotations

import sys

#: (module, class) of every library error that is the user's to fix
LIBRARY_ERRORS = (
    ("quant.quantizers", "QuantError"),
    ("sim.program", "ProgramError"),
    ("sim.accel", "AccelError"),
    ("ptq2rtl.models.registry", "ModelError"),
    ("hw.common", "ParameterError"),
    ("hw.verilog", "ExportError"),
    ("hw.synth", "SynthError"),
    ("hw.toolchain", "ToolchainError"),
    ("rtl_tests.accelerator", "RtlRunError"),
    ("sim.machine", "MachineError"),
    ("ptq2rtl.explore", "ExploreError"),
)


class UsageError(ValueError):
    """A bad command line: an argument out of range, a missing option, an output path that cannot be written."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The user-error classes of the modules imported so far.

    A class whose module was never imported cannot have been raised, so asking
    only ``sys.modules`` keeps a command from importing what it does not use
    (torch, through quant, for ``ptq2rtl simulate``).
    """
    found: list[type[BaseException]] = [UsageError, FileNotFoundError]
    for module, name in LIBRARY_ERRORS:
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)
