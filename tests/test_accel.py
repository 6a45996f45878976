"""The accelerator description: bundled configs, validation errors, and which programs an accelerator refuses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml

from sim import widths
from sim.accel import CONFIG_DIR, AccelError, check_program, load_accel
from sim.program import validate
from sim.timing import LATENCY_RANGE, operand_digits
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


def test_int8_weights_run_as_digit_planes_unless_the_ports_differ(tmp_path):
    check_program(vit_program(wbits=8, abits=4), load_accel("edge-int4"))  # int8 weights on the int4 port
    accel = load_accel(_variant(tmp_path, lambda d: d["array"].update(act_bits=8)))  # int4 weights, int8 acts
    with pytest.raises(AccelError) as e:
        check_program(vit_program(wbits=8, abits=8), accel)
    msg = str(e.value)
    assert "'patch_embed'" in msg and "'wbits'" in msg and "weight digit passes need weight_bits = act_bits" in msg


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


def test_the_vector_adder_refuses_operands_wider_than_the_residual_stream():
    program = vit_program(wbits=4, abits=4)
    wide = dataclasses.replace(program.tensors["blocks.0.proj.out"], bits=widths.ADDER_IN_BITS + 1)
    program.tensors["blocks.0.proj.out"] = wide
    with pytest.raises(AccelError, match=r"'blocks.0.res1' \(add\).*'blocks.0.proj.out' is int17, wider than "
                                         r"the vector adder's int16 operands"):
        check_program(program, load_accel("edge-int4"))
    program = vit_program(wbits=4, abits=4)
    pos = next(op for op in program.ops if op.kind == "add_const")
    pos.params["const"] = pos.params["const"].astype(np.int32) + (1 << widths.ADDER_IN_BITS)
    with pytest.raises(AccelError, match=r"'pos_embed' \(add_const\): field 'const'.*int16 operands"):
        check_program(program, load_accel("edge-int4"))


def test_requant_multiplier_must_fit(tmp_path):
    accel = load_accel(_variant(tmp_path, lambda d: d["units"]["requant"].update(multiplier_bits=8)))
    with pytest.raises(AccelError, match="'m'.*8-bit multipliers"):
        check_program(vit_program(), accel)


def test_gelu_table_must_fit_the_rom(tmp_path):
    accel = load_accel(_variant(tmp_path, lambda d: d["units"]["gelu"].update(in_bits=6)))
    with pytest.raises(AccelError, match=r"'blocks.0.gelu' \(gelu\): field 'in_bits': a 8-bit GELU table "
                                         r"\(256 entries\) does not fit the GELU unit's 6-bit ROM address \(64 entries"):
        check_program(vit_program(), accel)


def _edited(program, op_name, out_bits=None, **attrs):
    """``program`` with op ``op_name``'s attributes replaced (``out_bits``: its output tensor too), validated."""
    ops = []
    for op in program.ops:
        if op.name == op_name:
            extra = {"out_bits": out_bits} if out_bits is not None else {}
            op = dataclasses.replace(op, attrs={**op.attrs, **attrs, **extra})
        ops.append(op)
    tensors = dict(program.tensors)
    if out_bits is not None:
        out = next(op for op in ops if op.name == op_name).outputs[0]
        tensors[out] = dataclasses.replace(tensors[out], bits=out_bits)
    edited = dataclasses.replace(program, tensors=tensors, ops=ops)
    validate(edited)
    return edited


def _repq_program(family: str):
    from quant.lower import lower
    from quant.methods import get_method
    from tests.tiny_models import image_batch, text_batch, tiny_bert, tiny_vit

    spec, x = (tiny_vit()[1], image_batch()) if family == "vit" else (tiny_bert()[1], text_batch())
    return lower(get_method("repq")(spec, [(x, None)], 4, 4, progress=False))


def test_gelu_table_entries_wider_than_the_unit_are_refused(tmp_path):
    program = _repq_program("vit")  # the ROM writes repq's 16-bit per-tensor post-GELU grid
    accel = load_accel(_variant(tmp_path, lambda d: d["units"]["gelu"].update(out_bits=8)))
    with pytest.raises(AccelError, match=r"'blocks.0.gelu' \(gelu\): field 'out_bits': int16 GELU table entries "
                                         r"are wider than the GELU unit's int8 entries \(accepted: out_bits <= 8\)"):
        check_program(program, accel)


@pytest.mark.parametrize("family", ["vit", "bert"])
def test_repq_programs_run_on_the_edge_accelerators(family):
    program = _repq_program(family)
    assert {op.attrs["out_bits"] for op in program.ops if op.kind == "gelu"} == {16}
    for accel in ("edge-int4", "edge-int8"):
        check_program(program, load_accel(accel), seq_len=128)


def test_requant_channel_table_must_hold_every_channel():
    program = vit_program(dim=48, mlp_ratio=43)  # fc1: 2064 output channels
    with pytest.raises(AccelError, match=r"'blocks.0.fc1.requant' \(requant\): field 'm': 2064 per-channel entries "
                                         r"do not fit the requantizer's 2048-entry channel table"):
        check_program(program, load_accel("edge-int4"))
    check_program(vit_program(dim=48, mlp_ratio=42), load_accel("edge-int4"))  # 2016 channels fit


def test_requant_outputs_wider_than_the_unit_are_refused():
    program = _edited(vit_program(), "blocks.0.proj.requant", out_bits=24)
    with pytest.raises(AccelError, match=r"'blocks.0.proj.requant' \(requant\): field 'out_bits': 24-bit outputs "
                                         r"are wider than the requantizer's 16-bit output"):
        check_program(program, load_accel("edge-int4"))


def test_softmax_rows_longer_than_the_row_buffer_are_refused():
    from ptq2rtl.simulate import simulate_report

    with pytest.raises(AccelError, match=r"'blocks.0.softmax' \(softmax_log2\): field 'inputs': rows of 512 scores "
                                         r"in 'blocks.0.scores.log2' at 512 tokens do not fit the softmax unit's "
                                         r"256-entry row buffer \(accepted: rows <= 256\)"):
        simulate_report(bert_program(), "edge-int4", seq_len=512)  # what `simulate --seq-len 512` runs
    simulate_report(bert_program(), "edge-int4", seq_len=256)
    with pytest.raises(AccelError, match=r"field 'inputs': rows of 290 scores in 'blocks.0.scores.log2' do not fit"):
        check_program(vit_program(img=68), load_accel("edge-int4"))  # 17 x 17 patches and a class token


def test_softmax_frac_bits_must_be_the_units():
    with pytest.raises(AccelError, match=r"'blocks.0.softmax' \(softmax_log2\): field 'frac_bits': scores with 5 "
                                         r"fractional bits; the softmax unit's exp and log2 ROMs are built for 6"):
        check_program(_edited(vit_program(), "blocks.0.softmax", frac_bits=5), load_accel("edge-int4"))


def test_softmax_code_bits_must_be_the_units():
    with pytest.raises(AccelError, match=r"'blocks.0.softmax' \(softmax_log2\): field 'code_bits': 3-bit codes; "
                                         r"the softmax unit writes 4-bit log2 codes \(accepted: code_bits = 4\)"):
        check_program(_edited(vit_program(), "blocks.0.softmax", code_bits=3), load_accel("edge-int8"))


def test_log2_matmul_code_bits_must_be_the_arrays():
    with pytest.raises(AccelError, match=r"'blocks.0.context' \(matmul_log2\): field 'code_bits': 5-bit log2 codes; "
                                         r"the array decodes 4-bit codes into shifts"):
        check_program(_edited(vit_program(), "blocks.0.context", code_bits=5), load_accel("edge-int8"))


def test_layernorm_frac_bits_must_be_the_units():
    with pytest.raises(AccelError, match=r"'blocks.0.ln1' \(layernorm\): field 'frac_bits': a normalized value with "
                                         r"12 fractional bits; the LayerNorm unit fixes 10"):
        check_program(_edited(vit_program(), "blocks.0.ln1", frac_bits=12), load_accel("edge-int4"))


def test_layernorm_outputs_wider_than_the_unit_are_refused():
    with pytest.raises(AccelError, match=r"'embed_ln' \(layernorm\): field 'out_bits': 24-bit outputs are wider "
                                         r"than the LayerNorm unit's 16-bit output"):
        check_program(_edited(bert_program(), "embed_ln", out_bits=24), load_accel("edge-int4"), seq_len=64)


def test_layernorm_rows_wider_than_the_row_buffer_are_refused():
    with pytest.raises(AccelError, match=r"'blocks.0.ln1' \(layernorm\): field 'gamma': rows of 1032 channels do "
                                         r"not fit the LayerNorm unit's 1024-channel row buffer"):
        check_program(vit_program(depth=1, dim=1032, mlp_ratio=1), load_accel("edge-int4"))


@pytest.mark.parametrize("unit", sorted(LATENCY_RANGE))
def test_a_latency_below_what_the_rtl_needs_is_refused_on_load(tmp_path, unit):
    least = LATENCY_RANGE[unit][0]
    with pytest.raises(AccelError, match=rf"'units.{unit}.latency': {least - 1} outside the accepted range \[{least},"):
        load_accel(_variant(tmp_path, lambda d: d["units"][unit].update(latency=least - 1)))


@pytest.mark.parametrize("bits, port, digits", [(4, 4, 1), (3, 4, 1), (8, 4, 2), (8, 8, 1), (16, 4, 4), (5, 4, 2)])
def test_operand_digits(bits, port, digits):
    assert operand_digits(bits, port) == digits


def test_simulate_and_eval_refuse_with_the_same_check(tmp_path, capsys):
    from ptq2rtl.cli import main

    text = tmp_path / "bert.safetensors"
    bert_program().save(text)
    assert main(["simulate", str(text), "--seq-len", "512"]) == 2
    assert "field 'inputs': rows of 512 scores" in capsys.readouterr().err
    image = tmp_path / "vit.safetensors"
    vit_program().save(image)
    narrow = _variant(tmp_path, lambda d: d["units"]["gelu"].update(out_bits=2))
    for argv in (["simulate", str(image), "--accel", str(narrow)], ["eval", str(image), "--accel", str(narrow)]):
        assert main(argv) == 2
        assert "field 'out_bits': int4 GELU table entries are wider than the GELU unit's int2" in capsys.readouterr().err
