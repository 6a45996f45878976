"""The energy model: per-action counts (from ``sim/cycles.py``) times per-action energies.

Energies come from a named, cited preset of primitive costs (an add, a
multiply, a shift, a 64-bit SRAM read, a 64-bit DRAM access) scaled to the
accelerator's widths and buffer sizes, as Accelergy-style estimators do:

* adders and shifters: linear in width, ``E_add(w) = E_add32 * w / 32``;
* multipliers: quadratic, ``E_mul(a, b) = E_mul32 * a * b / 32**2``
  (Horowitz: 8x8 -> 0.19 pJ against the 0.2 pJ measured; 4x4 -> 0.05 pJ);
* SRAM: a power law through Horowitz's 8 KB and 1 MB points,
  ``E64(S) = E64(8 KiB) * (S / 8 KiB) ** a`` with ``a = log(E1M/E8K) / log 128``
  (gives 19.3 pJ at 32 KB against the 20 pJ measured); writes cost as much as
  reads; a buffer is built of 64-bit banks, as many as its array port is wide
  (:func:`sram_banks`), and an access costs what the bank's size costs; a small
  ROM (the GELU and softmax tables) is an SRAM of its size;
* DRAM: per byte, one eighth of a 64-bit access.

Every action energy can be overridden per accelerator from the YAML
(``energy: overrides: {mac: 0.1}``, in pJ). The breakdown keys mirror the
units: ``mac``, ``sram_<buffer>_read`` / ``_write`` per buffer, ``dram``,
``requant``, ``softmax``, ``gelu``, ``layernorm``. Residual adds, constant
adds and mean pooling run on the requantizer's lanes and count under
``requant``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim import timing, widths

if TYPE_CHECKING:
    from sim.accel import AccelConfig

PJ = 1e-12


@dataclass(frozen=True)
class Preset:
    """Primitive energies in pJ, from which every action energy is derived."""

    name: str
    citation: str
    add32: float  #: 32-bit integer add
    mul32: float  #: 32 x 32-bit integer multiply
    shift32: float  #: 32-bit barrel shift
    sram64_8k: float  #: 64-bit read of an 8 KiB SRAM
    sram64_1m: float  #: 64-bit read of a 1 MiB SRAM
    dram64: float  #: 64-bit DRAM access

    def add(self, bits: int) -> float:
        return self.add32 * bits / 32

    def mul(self, a_bits: int, b_bits: int) -> float:
        return self.mul32 * a_bits * b_bits / 32 ** 2

    def shift(self, bits: int) -> float:
        return self.shift32 * bits / 32

    def sram_byte(self, size_bytes: float) -> float:
        """Per byte read or written, for an SRAM (or ROM) of ``size_bytes``."""
        a = math.log(self.sram64_1m / self.sram64_8k) / math.log(128)
        return self.sram64_8k * (size_bytes / 8192) ** a / 8

    def rom_read(self, entries: int, bits: int) -> float:
        return self.sram_byte(entries * bits / 8) * bits / 8


_HOROWITZ = "M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, 45 nm, 0.9 V"
_ALADDIN = ("Y. S. Shao et al., 'Aladdin: a pre-RTL, power-performance accelerator simulator', ISCA 2014, "
            "40 nm component table (as used by Accelergy's Aladdin plug-in)")

PRESETS: dict[str, Preset] = {
    # The shifter is not in Horowitz's table; it takes Aladdin's 40 nm shift/add ratio (0.417 / 0.21 pJ).
    # DRAM: the middle of Horowitz's 1.3-2.6 nJ per 64-bit access.
    "horowitz45": Preset("horowitz45", _HOROWITZ + "; shifter from Aladdin's shift/add ratio",
                         add32=0.1, mul32=3.1, shift32=0.1 * 0.417 / 0.21, sram64_8k=10.0, sram64_1m=100.0,
                         dram64=1950.0),
    # Aladdin's table has no memories: SRAM and DRAM as in horowitz45.
    "aladdin40": Preset("aladdin40", _ALADDIN + "; SRAM and DRAM from Horowitz ISSCC 2014",
                        add32=0.21, mul32=12.68, shift32=0.417, sram64_8k=10.0, sram64_1m=100.0, dram64=1950.0),
}

BREAKDOWN_KEYS = ("mac", "sram_weight_read", "sram_weight_write", "sram_activation_read", "sram_activation_write",
                  "sram_accumulator_read", "sram_accumulator_write", "dram", "requant", "softmax", "gelu", "layernorm")

#: action -> (breakdown key, what one action is)
ACTIONS: dict[str, tuple[str, str]] = {
    "mac": ("mac", "one multiply-accumulate of a PE (weight_bits x act_bits product, acc_bits add)"),
    "shift_mac": ("mac", "one shift-accumulate of a PE in log2 mode (P.V: a 4-bit code shifts the stationary value)"),
    "shift_mac_sqrt2": ("mac", "one shift-accumulate with base-sqrt(2) codes (odd codes add a x181/256 shift-add)"),
    "binary_mac": ("mac", "one PE cycle in a binary mode: binary_pack XNOR (or AND) gates, their popcount, "
                          "the accumulate"),
    **{f"sram_{b}_{d}": (f"sram_{b}_{d}", f"one byte {d} {'from' if d == 'read' else 'to'} the {b} buffer")
       for b in ("weight", "activation", "accumulator") for d in ("read", "write")},
    "dram": ("dram", "one byte moved to or from DRAM"),
    "requant": ("requant", "one element through the dyadic requantizer (multiply, round, shift, saturate)"),
    "requant_pow2": ("requant", "one element through the requantizer in power-of-two mode (round, shift, saturate)"),
    "add": ("requant", "one element of a residual add on the requantizer lanes (two scalings, add, round, shift)"),
    "add_const": ("requant", "one element of a constant add on the requantizer lanes"),
    "mean_pool": ("requant", "one input element of a mean pool on the requantizer lanes"),
    "max_pool": ("requant", "one tap of a max pool on the requantizer lanes (a compare)"),
    "binarize": ("requant", "one element's sign bit on the requantizer lanes (a compare with a threshold)"),
    "bi_attention": ("requant", "one element of a binary attention map on the requantizer lanes (a compare)"),
    "softmax": ("softmax", "one element through the log2 softmax unit (max, exp ROM, sum, code passes)"),
    "softmax_row": ("softmax", "one row of the softmax unit: the log2 of the sum"),
    "layernorm": ("layernorm", "one element through the LayerNorm unit (sum, square, normalize, affine)"),
    "layernorm_row": ("layernorm", "one row of the LayerNorm unit: square root and two divisions"),
    "gelu": ("gelu", "one element through the GELU unit (a ROM read)"),
}

SOFTMAX_ROM = (1 << widths.SOFTMAX_FRAC_BITS, widths.SOFTMAX_EXP_BITS + 1)  #: exp2 table entries x bits
LOG2_ROM = (1 << widths.SOFTMAX_LOG_BITS, widths.SOFTMAX_FRAC_BITS)  #: log2 table entries x bits


def preset_energies(accel: "AccelConfig") -> dict[str, float]:
    """Every action's energy in pJ on ``accel``, from its preset alone (no overrides)."""
    p = PRESETS[accel.energy.preset]
    arr, rq = accel.array, accel.requant
    acc = arr.acc_bits
    prod = acc + rq.multiplier_bits  # the requantizer's product width
    res, sm, ln, var = widths.RESIDUAL_BITS, widths.SOFTMAX_IN_BITS, widths.LN_IN_BITS, widths.LN_VAR_BITS
    pack = timing.binary_pack(arr.act_bits, arr.weight_bits)  # binary products a PE sums per cycle
    scale = p.shift(acc) if rq.pow2_only else p.mul(res, rq.multiplier_bits)  # one operand's alignment in an add
    e = {
        "mac": p.mul(arr.weight_bits, arr.act_bits) + p.add(acc),
        "shift_mac": p.shift(arr.weight_bits + 14) + p.add(acc),
        # half the codes odd: the x181 (0b10110101) shift-add is a constant multiply by an 8-bit value
        "shift_mac_sqrt2": p.shift(arr.weight_bits + 15) + p.add(acc) + p.mul(arr.weight_bits, 8) / 2,
        "dram": p.dram64 / 8,
        "requant": p.mul(acc, rq.multiplier_bits) + p.add(prod) + p.shift(prod),
        "requant_pow2": p.add(acc) + p.shift(acc),
        "add": 2 * scale + p.add(acc) + p.shift(acc),
        "add_const": p.add(acc),
        "mean_pool": p.add(acc),
        "max_pool": p.add(res),
        # Binary PEs. No published table lists a 1-bit XNOR or AND gate at 45 nm, so a gate is priced as one bit
        # of Horowitz's adder (add32 / 32: a full-adder cell, which holds two XOR gates, so an upper bound);
        # the popcount of ``pack`` bits is a tree of pack - 1 adders of up to bit_length(pack) bits, and the
        # accumulate is the int MAC's acc-wide add. Per binary product that is about a quarter of an int4 MAC
        # on the horowitz45 preset, where the acc-wide add dominates both.
        "binary_mac": (pack * p.add(1) + (pack - 1) * p.add(pack.bit_length()) + p.add(acc)),
        "binarize": p.add(acc),
        "bi_attention": p.add(acc),
        # max compare; subtract, exp ROM, shift, sum; add, round, shift to the code
        "softmax": 4 * p.add(sm) + p.add(acc) + 2 * p.shift(sm) + p.rom_read(*SOFTMAX_ROM),
        "softmax_row": p.shift(acc) + p.rom_read(*LOG2_ROM) + p.add(sm),
        # sum; square and sum; subtract, multiply by the reciprocal, round; gamma, beta, round
        "layernorm": (p.add(acc) + p.mul(ln, ln) + p.add(var) + p.add(ln) + p.mul(ln + 1, widths.LN_RECIP_BITS)
                      + p.add(acc) + p.shift(acc) + p.mul(widths.LN_NORM_BITS, widths.LN_GAMMA_BITS) + p.add(acc)
                      + p.shift(acc)),
        # integer square root of the variance a bit a step (square and compare), two restoring divisions
        "layernorm_row": (var // 2) * (p.mul(var // 2, var // 2) + p.add(var)) + 2 * acc * p.add(acc),
        "gelu": p.rom_read(1 << accel.gelu.in_bits, accel.gelu.out_bits),
    }
    for buf in ("weight", "activation", "accumulator"):
        per_byte = p.sram_byte(accel.buffers.bytes(buf) / sram_banks(accel, buf))
        e[f"sram_{buf}_read"] = e[f"sram_{buf}_write"] = per_byte
    return e


def sram_banks(accel: "AccelConfig", buffer: str) -> int:
    """64-bit-wide banks a buffer needs to feed its array port every cycle.

    Ports: a weight-tile row (``cols * weight_bits``), an input vector
    (``rows * act_bits``), a row of partial sums (``cols * acc_bits``). Each
    access goes to one bank, so it costs the energy of an SRAM of the bank's size.
    """
    arr = accel.array
    port_bits = {"weight": arr.cols * arr.weight_bits, "activation": arr.rows * arr.act_bits,
                 "accumulator": arr.cols * arr.acc_bits}[buffer]
    return max(1, port_bits // 64)


def action_energies(accel: "AccelConfig") -> dict[str, float]:
    """Every action's energy in pJ on ``accel``: its preset, then the YAML's per-action overrides."""
    e = preset_energies(accel)
    e.update(dict(accel.energy.overrides))
    return e


def energy_of(actions: dict[str, int], table: dict[str, float]) -> dict[str, float]:
    """Joules per breakdown key of a bag of action counts."""
    out = dict.fromkeys(BREAKDOWN_KEYS, 0.0)
    for action, count in actions.items():
        out[ACTIONS[action][0]] += count * table[action] * PJ
    return out


@dataclass(frozen=True)
class EnergyReport:
    preset: str
    citation: str
    breakdown_j: dict[str, float]  #: joules per BREAKDOWN_KEYS entry
    per_op_j: dict[str, float]  #: joules per op name
    table_pj: dict[str, float]  #: the per-action energies used

    @property
    def total_j(self) -> float:
        return sum(self.breakdown_j.values())

    def largest(self, n: int = 3) -> list[tuple[str, float]]:
        return sorted(self.breakdown_j.items(), key=lambda kv: -kv[1])[:n]


def program_energy(costs, accel: "AccelConfig") -> EnergyReport:
    """The energy of a :class:`sim.cycles.CycleReport` on ``accel``, broken down by unit and by op."""
    table = action_energies(accel)
    total = dict.fromkeys(BREAKDOWN_KEYS, 0.0)
    per_op = {}
    for op in costs.ops:
        e = energy_of(op.actions, table)
        per_op[op.name] = sum(e.values())
        for k, v in e.items():
            total[k] += v
    preset = PRESETS[accel.energy.preset]
    return EnergyReport(preset.name, preset.citation, total, per_op, table)
