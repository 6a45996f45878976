"""Cycle counts of the accelerator's units, one formula per unit.

These formulas are a contract: the Amaranth unit in ``hw/`` takes exactly
this many clock cycles (its cocotb bench measures it), and ``sim/cycles.py``
builds whole-program estimates from them. Change a formula only together
with the RTL that it describes.
"""

from __future__ import annotations


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def mac_fold_cycles(m: int, rows: int, cols: int) -> int:
    """One weight fold of a weight-stationary ``rows`` x ``cols`` array.

    ``rows`` cycles load the weights (one array row per cycle), then ``m``
    input vectors stream in with a one-cycle skew per row and column: the last
    partial sum leaves the array ``m + rows + cols - 1`` cycles later.
    """
    return rows + m + rows + cols - 1


def gemm_cycles(m: int, k: int, n: int, rows: int, cols: int) -> int:
    """(m x k) @ (k x n) on the array: ``ceil(k/rows) * ceil(n/cols)`` folds, run back to back."""
    return ceil_div(k, rows) * ceil_div(n, cols) * mac_fold_cycles(m, rows, cols)


def stream_cycles(n: int, lanes: int, latency: int) -> int:
    """A fully pipelined element-wise unit (requantizer, GELU ROM): ``lanes`` per cycle, ``latency`` deep."""
    return ceil_div(n, lanes) + latency - 1 if n else 0


def softmax_row_cycles(length: int, lanes: int, latency: int) -> int:
    """One softmax row: a max pass, an exp-and-sum pass, the log2 of the sum, a code pass."""
    return 3 * ceil_div(length, lanes) + latency


def layernorm_row_cycles(n: int, lanes: int, latency: int) -> int:
    """One LayerNorm row: a sum pass, a sum-of-squares pass, the divide / square-root / reciprocal
    steps (``latency``), an output pass."""
    return 3 * ceil_div(n, lanes) + latency
