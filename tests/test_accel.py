"""The accelerator description: bundled configs, validation errors, and which programs an accelerator refuses."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from sim.accel import CONFIG_DIR, AccelError, check_program, load_accel
from sim.timing import operand_digits
from tests.synthetic_programs import bert_program, vit_program


def _variant(tmp_path, edit, base="edge-int4"):
    """A copy of a bundled config with ``edit(data)`` applied, written to a temporary file."""
    data = yaml.safe_load((CONFIG_DIR / f"{base}.yaml").read_text())
    edit(data)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_bundled_configs_load_by_name_and_by_path():
    a = load_accel("edge-int4")
    assert (a.array.rows, a.array.cols, a.array.weight_bits, a.array.act_bits, a.array.acc_bits) == (16, 16, 4, 4, 32)
    assert a.array.dataflow == "weight_stationary" and a.clock_mhz == 200
    b = load_accel(CONFIG_DIR / "edge-int8.yaml")
    assert (b.array.weight_bits, b.array.act_bits) == (8, 8)
    assert b.source.endswith("edge-int8.yaml")


def test_config_is_frozen():
    a = load_accel("edge-int4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.array.rows = 32


def test_unknown_name_lists_the_bundled_configs():
    with pytest.raises(AccelError, match="edge-int4"):
        load_accel("edge-int3")


def test_out_of_range_field_names_file_field_and_range(tmp_path):
    path = _variant(tmp_path, lambda d: d["array"].update(rows=0))
    with pytest.raises(AccelError) as e:
        load_accel(path)
    msg = str(e.value)
    assert str(path) in msg and "'array.rows'" in msg and "[1, 256]" in msg


@pytest.mark.parametrize("field, value, expected", [
    ("weight_bits", 6, "'array.weight_bits': 6 is not one of 4, 8"),
    ("dataflow", "row_stationary", "'weight_stationary'"),
    ("acc_bits", 24, "'array.acc_bits'"),
])
def test_array_choices_list_what_is_accepted(tmp_path, field, value, expected):
    with pytest.raises(AccelError, match=expected):
        load_accel(_variant(tmp_path, lambda d: d["array"].update({field: value})))


def test_missing_and_unknown_fields_are_named(tmp_path):
    with pytest.raises(AccelError, match="'units.softmax.lanes': missing"):
        load_accel(_variant(tmp_path, lambda d: d["units"]["softmax"].pop("lanes")))
    with pytest.raises(AccelError, match="'buffers.l2_kib': unknown field"):
        load_accel(_variant(tmp_path, lambda d: d["buffers"].update(l2_kib=512)))


def test_energy_overrides_are_checked(tmp_path):
    with pytest.raises(AccelError, match="'energy.overrides.flops': unknown action"):
        load_accel(_variant(tmp_path, lambda d: d["energy"].update(overrides={"flops": 1.0})))
    with pytest.raises(AccelError, match="'energy.overrides.mac'.*outside"):
        load_accel(_variant(tmp_path, lambda d: d["energy"].update(overrides={"mac": -1.0})))
    with pytest.raises(AccelError, match="'energy.preset'"):
        load_accel(_variant(tmp_path, lambda d: d["energy"].update(preset="magic7")))
    a = load_accel(_variant(tmp_path, lambda d: d["energy"].update(overrides={"mac": 0.5})))
    assert dict(a.energy.overrides) == {"mac": 0.5}


def test_accumulator_buffer_must_hold_a_tile(tmp_path):
    with pytest.raises(AccelError, match="'buffers.accumulator_kib'.*at least 16 rows"):
        load_accel(_variant(tmp_path, lambda d: d["buffers"].update(accumulator_kib=1)))


def test_not_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("array: [1, 2\n")
    with pytest.raises(AccelError, match="not valid YAML"):
        load_accel(path)


def test_int8_weights_are_refused_by_edge_int4():
    with pytest.raises(AccelError) as e:
        check_program(vit_program(wbits=8, abits=8), load_accel("edge-int4"))
    msg = str(e.value)
    assert "edge-int4" in msg and "'patch_embed'" in msg and "'wbits'" in msg and "wbits <= 4" in msg


def test_programs_that_fit_are_accepted():
    check_program(vit_program(wbits=4, abits=4), load_accel("edge-int4"))
    check_program(vit_program(wbits=4, abits=8), load_accel("edge-int4"))  # 8-bit activations: digit passes
    check_program(vit_program(wbits=8, abits=8), load_accel("edge-int8"))
    check_program(bert_program(wbits=4, abits=4), load_accel("edge-int8"))


def test_pow2_only_requantizer_refuses_dyadic_requants(tmp_path):
    accel = load_accel(_variant(tmp_path, lambda d: d["units"]["requant"].update(pow2_only=True)))
    with pytest.raises(AccelError, match="'pow2'.*power-of-two-only"):
        check_program(vit_program(pow2=False), accel)
    check_program(vit_program(pow2=True), accel)


def test_requant_multiplier_must_fit(tmp_path):
    accel = load_accel(_variant(tmp_path, lambda d: d["units"]["requant"].update(multiplier_bits=8)))
    with pytest.raises(AccelError, match="'m'.*8-bit multipliers"):
        check_program(vit_program(), accel)


def test_gelu_table_must_fit_the_rom(tmp_path):
    accel = load_accel(_variant(tmp_path, lambda d: d["units"]["gelu"].update(in_bits=6)))
    with pytest.raises(AccelError, match="'in_bits'.*6-bit ROM"):
        check_program(vit_program(), accel)


@pytest.mark.parametrize("bits, port, digits", [(4, 4, 1), (3, 4, 1), (8, 4, 2), (8, 8, 1), (16, 4, 4), (5, 4, 2)])
def test_operand_digits(bits, port, digits):
    assert operand_digits(bits, port) == digits
