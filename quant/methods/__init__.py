"""Quantization methods, registered by name (``@register_method("repq")``), one file each.

A method takes the float model structure, calibration batches, the uniform widths WnAn and
optional per-site widths (``quant.plan.Sites``: mixed precision, sensitivity) and returns
a :class:`quant.plan.QuantPlan`; the shared lowering turns it into a program.
"""

from __future__ import annotations

import importlib
from typing import Callable

from quant.quantizers import QuantError

_METHODS: dict[str, Callable] = {}
#: methods ``get_method`` finds but ``method_names`` (what sweeps, reports and the per-method tests run) leaves
#: out: the binary ones, which take BERT encoders only and, for bibert, a trained student
_UNLISTED: set[str] = set()
_MODULES = ("baseline", "repq", "apq", "hvit", "fqvit", "aocq", "mptq", "tsptq", "tpvit", "bibert")


def register_method(name: str, *, listed: bool = True):
    def wrap(fn: Callable) -> Callable:
        _METHODS[name] = fn
        if not listed:
            _UNLISTED.add(name)
        return fn
    return wrap


def _load_all() -> None:
    for mod in _MODULES:
        importlib.import_module(f"quant.methods.{mod}")


def method_names() -> list[str]:
    """The post-training methods every transformer takes (the binary methods are left out)."""
    _load_all()
    return sorted(set(_METHODS) - _UNLISTED)


def get_method(name: str) -> Callable:
    _load_all()
    if name not in _METHODS:
        raise QuantError(f"unknown method {name!r} (known: {', '.join(sorted(_METHODS))})")
    return _METHODS[name]
