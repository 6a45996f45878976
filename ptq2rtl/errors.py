"""The errors that mean bad input from the user: the command line reports them in one line, without a traceback."""

from __future__ import annotations


def _collect() -> tuple[type[BaseException], ...]:
    from quant.quantizers import QuantError
    from sim.program import ProgramError

    errors: list[type[BaseException]] = [QuantError, ProgramError, FileNotFoundError]
    for module, name in (("ptq2rtl.models", "ModelError"), ("sim.accel", "AccelError")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


USER_ERRORS = _collect()
