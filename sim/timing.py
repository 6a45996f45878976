"""Cycle counts of the accelerator's units, one formula per unit.

These formulas are a contract: the Amaranth unit in ``hw/`` takes exactly
this many clock cycles (its cocotb bench measures it), and ``sim/cycles.py``
builds whole-program estimates from them. Change a formula only together
with the RTL that it describes.

What the RTL benches measure: the number of clock edges from the one that
takes a unit's first input beat to the one that makes its last output,
inclusive (``rtl_tests/bench_common.py``). The vector units (softmax,
LayerNorm) take the next row's first beat on the cycle the last result of
the previous row appears, so back-to-back rows cost ``rows * row_cycles``.

``latency`` is the unit's configured latency (``units.<unit>.latency`` of the
accelerator description); each unit has a minimum it can be built with, and
pads up to the configured value:

* requantizer: 6 register stages (table read, the entry registered, the two
  partial products -- a left shift in power-of-two mode --, their sum and the
  coarse right shift, the fine shift beside the saturation tests, the rounding
  with zero point and the select);
* GELU: 1 (the ROM read);
* softmax: 8 (``hw.softmax.PIPELINE_LATENCY``): 1 waiting for the last beat's
  max, 5 from the last exp read to the first code read (the exp pass's 5 stages
  and log2's 2, less the code pass's difference stage that overlaps them), 2 for
  the last codes;
* LayerNorm: the fixed work between its passes, ``hw.layernorm.LayerNorm.latency_for``:
  ``ceil(16/k) + 16 + ceil(31/k) + 21`` for 16-bit inputs at ``k`` divider
  bits a cycle (84 at k = 1, 61 at k = 2): the mean's division, the square
  root (a bit a cycle), the reciprocal's division, and 21 edges of pipeline:
  the row sum's 6 stages, the sum of squares' 4 after the stage that needs the
  mean, the output pass's 7 after the stage that needs the reciprocal, 4
  hand-overs (``hw.layernorm.PIPELINE_EDGES``);
"""

from __future__ import annotations

from sim import widths


def layernorm_latency(in_bits: int, recip_bits: int, steps_per_cycle: int) -> int:
    """The LayerNorm unit's fixed per-row work in clock edges: the mean's (``in_bits``) and the reciprocal's
    (``recip_bits + 1``) divisions at ``steps_per_cycle`` quotient bits a cycle, the ``in_bits``-bit square
    root at one bit a cycle, and 21 edges of pipeline stages and hand-overs that the passes do not hide."""
    k = steps_per_cycle
    return -(-in_bits // k) + in_bits + -(-(recip_bits + 1) // k) + 21


LN_MAX_STEPS_PER_CYCLE = 8  #: the fastest LayerNorm divider the RTL builds
#: the least configurable latency of each unit (what its RTL needs) and the most its padding allows
LATENCY_RANGE = {
    "requant": (6, 64),
    "gelu": (1, 64),
    "softmax": (8, 1 << 12),
    "layernorm": (layernorm_latency(widths.LN_IN_BITS, widths.LN_RECIP_BITS, LN_MAX_STEPS_PER_CYCLE), 1 << 12),
}


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


#: register stages of a MAC array row's operand before its first PE: the streamed activation (or in a log2
#: fold its code, decoded) is registered once, so a buffer read or the decode never shares a cycle with a product
MAC_IN_STAGES = 1
#: register stages of a PE's product before it joins the partial sum: the product in one cycle, the log2
#: mode's coarse shift, the chain select and the add in the next (every PE the same, so the skew holds)
MAC_PRODUCT_STAGES = 1
#: register stages of the MAC array's column bottom (each column's partial-sum chains times their factors,
#: an adder tree, then the digit shift) between the array's last row and the accumulator buffer
MAC_BOTTOM_STAGES = 2
#: register stages of the accumulator buffer before the one that registers the sum and its saturated output:
#: the read data is registered before the add (a block RAM's clock-to-output and a 33-bit carry chain do not
#: fit one 100 MHz cycle on an ECP5)
MAC_ACC_STAGES = 1


def mac_align_cycles(rows: int, cols: int) -> int:
    """Clock edges from a streamed input to its column sums leaving the column bottom, all columns
    aligned: the operand's :data:`MAC_IN_STAGES`, the product's :data:`MAC_PRODUCT_STAGES`, the
    ``rows + cols - 1`` skew of the array, then :data:`MAC_BOTTOM_STAGES` stages."""
    return MAC_IN_STAGES + MAC_PRODUCT_STAGES + rows + cols - 1 + MAC_BOTTOM_STAGES


def mac_drain_cycles(rows: int, cols: int) -> int:
    """Clock edges from a fold's last streamed input to its last accumulation: its column sums aligned
    (:func:`mac_align_cycles`), then the accumulator's :data:`MAC_ACC_STAGES` extra stages."""
    return mac_align_cycles(rows, cols) + MAC_ACC_STAGES


def mac_fold_cycles(m: int, rows: int, cols: int) -> int:
    """One weight fold of a weight-stationary ``rows`` x ``cols`` array.

    ``rows`` cycles load the weights (one array row per cycle), then ``m``
    input vectors stream in with a one-cycle skew per row and column: the last
    partial sum leaves the array ``m + rows + cols - 1`` cycles, and the
    operand's and the product's stages, later; :func:`mac_drain_cycles` after
    the last input it is accumulated.
    The next fold's first weight beat is taken on the following cycle.
    """
    return rows + m + mac_drain_cycles(rows, cols)


def gemm_cycles(m: int, k: int, n: int, rows: int, cols: int) -> int:
    """(m x k) @ (k x n) on the array: ``ceil(k/rows) * ceil(n/cols)`` folds, run back to back."""
    return ceil_div(k, rows) * ceil_div(n, cols) * mac_fold_cycles(m, rows, cols)


def binary_pack(act_bits: int, weight_bits: int) -> int:
    """Binary products a PE sums per cycle in the array's binary modes: its activation port carries
    ``act_bits`` 1-bit operands and its weight register ``weight_bits`` sign bits, so it takes the narrower
    of the two, ``min(act_bits, weight_bits)`` (4 on an int4 array), and a fold covers ``rows`` times as many
    reduction indices."""
    return min(act_bits, weight_bits)


def binary_gemm_cycles(m: int, k: int, n: int, rows: int, cols: int, pack: int) -> int:
    """A binary (m x k) @ (k x n) product: the plain product's folds over ``ceil(k / pack)`` packed reduction
    indices, the same fold timing (the popcount replaces the product in the PE's product stage)."""
    return gemm_cycles(m, ceil_div(k, pack), n, rows, cols)


def stream_cycles(n: int, lanes: int, latency: int) -> int:
    """A fully pipelined element-wise unit (requantizer, GELU ROM): ``lanes`` per cycle, ``latency`` deep."""
    return ceil_div(n, lanes) + latency - 1 if n else 0


#: register stages the softmax unit's truncated uniform-log2 output adds after a log2 code's (the fraction's
#: exp ROM entry, its shift and rounding, the pick between the uniform level and the log2 level)
TULQ_EXTRA_STAGES = 3


def softmax_row_cycles(length: int, lanes: int, latency: int, tulq: bool = False) -> int:
    """One softmax row: a max pass, an exp-and-sum pass, the log2 of the sum, a code pass (with ``tulq``
    the truncated uniform-log2 levels, :data:`TULQ_EXTRA_STAGES` deeper)."""
    return 3 * ceil_div(length, lanes) + latency + (TULQ_EXTRA_STAGES if tulq else 0)


def layernorm_row_cycles(n: int, lanes: int, latency: int) -> int:
    """One LayerNorm row: a sum pass, a sum-of-squares pass, the divide / square-root / reciprocal
    steps (``latency``), an output pass."""
    return 3 * ceil_div(n, lanes) + latency


def operand_digits(bits: int, port_bits: int) -> int:
    """Passes an operand of ``bits`` takes through a ``port_bits``-wide array port: ``ceil(bits / port_bits)``.

    Digit d of x is ``(x >> (d*port_bits)) mod 2**port_bits``, read as unsigned,
    except the top digit of a signed operand, read as signed: each port has a
    sign-mode bit (a ``port_bits + 1``-wide signed multiplier input), so signed
    and unsigned operands up to ``port_bits`` wide take one pass. The
    accumulator adds each pass's partial sums shifted left by ``d*port_bits``.
    """
    return ceil_div(bits, port_bits)
