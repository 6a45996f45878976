"""The energy model: cited anchor points, width scaling, the breakdown, overrides, and pow2 vs dyadic requant."""

from __future__ import annotations

import dataclasses

import pytest

from sim.accel import EnergyConfig, load_accel
from sim.cycles import program_cycles
from sim.energy import BREAKDOWN_KEYS, PJ, PRESETS, action_energies, program_energy, sram_banks
from tests.synthetic_programs import bert_program, vit_program

EDGE4 = load_accel("edge-int4")
EDGE8 = load_accel("edge-int8")
H = PRESETS["horowitz45"]


def _energy(program, accel, **kw):
    return program_energy(program_cycles(program, accel, **kw), accel)


def test_horowitz_anchor_points():
    assert H.mul(8, 8) == pytest.approx(0.2, rel=0.05)
    assert H.mul(32, 32) == pytest.approx(3.1)
    assert H.add(8) == pytest.approx(0.03, rel=0.2)
    assert H.add(32) == pytest.approx(0.1)
    assert 8 * H.sram_byte(8 * 1024) == pytest.approx(10.0)
    assert 8 * H.sram_byte(32 * 1024) == pytest.approx(20.0, rel=0.05)
    assert 8 * H.sram_byte(1024 * 1024) == pytest.approx(100.0)
    assert 1300 <= 8 * action_energies(EDGE4)["dram"] <= 2600


def test_multipliers_scale_quadratically_and_adders_linearly():
    assert H.mul(4, 4) == pytest.approx(H.mul(8, 8) / 4)
    assert H.add(16) == pytest.approx(H.add(32) / 2)
    e4, e8 = action_energies(EDGE4), action_energies(EDGE8)
    assert e8["mac"] - e4["mac"] == pytest.approx(H.mul(8, 8) - H.mul(4, 4))


def test_sram_banks_follow_the_array_ports():
    assert sram_banks(EDGE4, "accumulator") == 16 * 32 // 64
    assert sram_banks(EDGE4, "activation") == 1 and sram_banks(EDGE8, "activation") == 2


def test_breakdown_has_exactly_the_unit_keys_and_sums_to_the_total():
    e = _energy(vit_program(), EDGE4)
    assert tuple(e.breakdown_j) == BREAKDOWN_KEYS
    assert set(BREAKDOWN_KEYS) >= {"mac", "dram", "requant", "softmax", "gelu", "layernorm",
                                   "sram_weight_read", "sram_activation_write", "sram_accumulator_read"}
    assert sum(e.per_op_j.values()) == pytest.approx(e.total_j)
    assert all(v > 0 for v in e.breakdown_j.values())
    assert len(e.largest(3)) == 3 and e.largest(1)[0][1] == max(e.breakdown_j.values())


def test_mac_energy_is_array_macs_times_the_mac_energy():
    p = vit_program()
    r = program_cycles(p, EDGE4)
    e = program_energy(r, EDGE4)
    table = action_energies(EDGE4)
    macs = sum(o.actions.get("mac", 0) for o in r.ops)
    shifts = sum(o.actions.get("shift_mac", 0) for o in r.ops)  # base-2 codes
    assert macs + shifts == r.array_macs
    assert e.breakdown_j["mac"] == pytest.approx((macs * table["mac"] + shifts * table["shift_mac"]) * PJ)


def test_sqrt2_codes_cost_the_same_cycles_and_a_little_more_energy():
    base, half = (program_cycles(vit_program(sqrt2=s), EDGE4) for s in (False, True))
    assert base.cycles == half.cycles
    e_base, e_half = program_energy(base, EDGE4), program_energy(half, EDGE4)
    assert e_base.breakdown_j["mac"] < e_half.breakdown_j["mac"] < 1.2 * e_base.breakdown_j["mac"]


def test_a_power_of_two_requantizer_costs_less_than_a_dyadic_one():
    table = action_energies(EDGE4)
    assert table["requant_pow2"] < table["requant"] / 4  # a shifter against a 32 x 16-bit multiplier
    dyadic = _energy(vit_program(pow2=False), EDGE4)
    pow2 = _energy(vit_program(pow2=True), EDGE4)
    assert pow2.breakdown_j["requant"] < dyadic.breakdown_j["requant"]
    assert pow2.total_j < dyadic.total_j


def test_overrides_replace_the_preset_per_action():
    base = EDGE4
    over = dataclasses.replace(base, energy=EnergyConfig("horowitz45", (("mac", 1.0), ("dram", 0.0))))
    r = program_cycles(vit_program(), base)
    e0, e1 = program_energy(r, base), program_energy(r, over)
    assert action_energies(over)["mac"] == 1.0
    assert e1.breakdown_j["dram"] == 0.0
    assert e1.breakdown_j["softmax"] == e0.breakdown_j["softmax"]
    assert e1.breakdown_j["mac"] > e0.breakdown_j["mac"]


def test_presets_are_named_cited_and_differ():
    assert set(PRESETS) >= {"horowitz45", "aladdin40"}
    assert all("20" in p.citation for p in PRESETS.values())  # a year in every citation
    aladdin = dataclasses.replace(EDGE4, energy=EnergyConfig("aladdin40"))
    assert action_energies(aladdin)["mac"] > action_energies(EDGE4)["mac"]


def test_text_programs_spend_energy_in_every_unit():
    e = _energy(bert_program(), EDGE8, seq_len=64)
    for key in ("softmax", "layernorm", "gelu", "requant", "mac"):
        assert e.breakdown_j[key] > 0
