"""The compiler (sim.compile) and the instruction-level machine (sim.machine) against the golden engine:
every method's vit-digits program runs on the machine with the engine's outputs bit for bit, the
instruction encoding survives DRAM, and what the accelerator cannot run is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from ptq2rtl import flows
from ptq2rtl.models import iter_batches
from quant.methods import method_names
from quant.quantizers import program_inputs
from sim import engine, intops, isa, machine
from sim.accel import CONFIG_DIR, AccelError, load_accel, parse_accel
from sim.compile import compile_program, sub_program
from sim.isa import Instr
from sim.program import validate
from tests.synthetic_programs import bert_program, conv_program, vit_program

SAMPLES = 3
ACCEL = {4: "edge-int4", 8: "edge-int8"}


@pytest.fixture(scope="session")
def programs():
    """vit-digits programs of every registered method, W4A4 and W8A8 (calibration takes seconds)."""
    spec = flows.load_spec("vit-digits")
    return {(m, b): flows.quantize("vit-digits", m, b, b, progress=False, spec=spec)[0]
            for m in method_names() for b in (4, 8)}


@pytest.fixture(scope="session")
def images():
    return next(iter_batches("vit-digits", "eval", SAMPLES))[0]


def variant(base: str, **changes) -> object:
    """``configs/<base>.yaml`` with dotted fields changed."""
    data = yaml.safe_load((CONFIG_DIR / f"{base}.yaml").read_text())
    for key, value in changes.items():
        *path, last = key.split("__")
        d = data
        for p in path:
            d = d[p]
        d[last] = value
    return parse_accel(data, f"{base}-variant")


def run_all(program, accel, inputs: dict, samples: int) -> tuple[list[dict], list[machine.MachineRun]]:
    compiled = compile_program(program, accel)
    runs = [machine.run(compiled.image({k: v[s] for k, v in inputs.items()}), accel) for s in range(samples)]
    return [compiled.outputs(r.image) for r in runs], runs


def assert_engine_outputs(program, accel, inputs: dict, samples: int = SAMPLES) -> list[machine.MachineRun]:
    want = engine.run(program, inputs).outputs
    got, runs = run_all(program, accel, inputs, samples)
    for s, out in enumerate(got):
        for name, y in out.items():
            assert y.shape == want[name][s].shape and y.dtype == want[name].dtype
            bad = np.flatnonzero(y != want[name][s])
            assert not bad.size, (f"sample {s}, output {name!r}: element {bad[0]} is {y.flat[bad[0]]}, "
                                  f"the engine gives {want[name][s].flat[bad[0]]}")
    return runs


# ------------------------------------------------------------------ encoding
def _random_instr(op: str, rng: np.random.Generator) -> Instr:
    fields = {}
    for name in isa.FORMATS[op]:
        if name in isa.ENUMS:
            fields[name] = isa.ENUMS[name][rng.integers(len(isa.ENUMS[name]))]
        else:
            bits = isa.SLOT_BITS * (2 if name in isa.WIDE else 1)
            fields[name] = int(rng.integers(0, 1 << bits, dtype=np.int64))
    flags = frozenset(f for f in isa.FLAGS if rng.integers(2))
    return Instr(op, fields, flags)


@pytest.mark.parametrize("op", sorted(isa.OPCODES))
def test_every_instruction_survives_encode_dram_and_decode(op):
    rng = np.random.default_rng(len(op))
    g = machine.Geometry.of(load_accel("edge-int4"))
    for _ in range(50):
        instr = _random_instr(op, rng)
        word = int.from_bytes(machine.instr_to_beats(instr, g).tobytes(), "little")
        back = isa.decode(word)
        assert (back.op, back.fields, back.flags) == (instr.op, instr.fields, instr.flags)


@pytest.mark.parametrize("target", isa.TARGETS)
@pytest.mark.parametrize("config", ["edge-int4", "edge-int8"])
def test_dram_items_decode_to_what_was_encoded(target, config):
    g = machine.Geometry.of(load_accel(config))
    rng = np.random.default_rng(1)
    shape = {"abuf": (5, g.v, 1), "wbuf": (5, g.v, 1), "requant": (5, 3), "gelu": (5,), "layernorm": (5, g.v, 3)}
    fields = g.entry_fields(target)
    lo = np.array([-(1 << (b - 1)) if s else 0 for b, s in fields])
    hi = np.array([(1 << (b - 1)) - 1 if s else (1 << b) - 1 for b, s in fields])
    values = rng.integers(lo, hi + 1, size=(5, _lanes(target, g), len(fields)))
    values = values.reshape(shape[target][:-1] if shape[target][-1] == 1 else shape[target])
    raw = machine.encode_items(target, values, g)
    assert raw.shape == (5 * g.item_beats(target), g.beat_bytes) and raw.dtype == np.uint8
    assert np.array_equal(machine.decode_items(target, raw, g), values)


def _lanes(target, g):
    return g.v if target in ("abuf", "wbuf", "layernorm") else 1


# ------------------------------------------------------------------ whole programs
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("method", method_names())
def test_machine_gives_the_engine_outputs(programs, images, method, bits):
    program = programs[(method, bits)]
    accel = load_accel(ACCEL[bits])
    runs = assert_engine_outputs(program, accel, program_inputs(program, images))
    compiled = compile_program(program, accel)
    cycles = compiled.cycles(accel)
    assert all(r.cycles == cycles.total for r in runs)  # one sample's schedule does not depend on its data
    assert [r.cycles for r in runs[0].retired] == cycles.per_instr
    assert sum(cycles.per_op.values()) == cycles.total
    views = [op.name for op in program.ops if op.kind in ("split_heads", "merge_heads", "select_token", "patchify")]
    assert all(cycles.per_op[name] == 0 for name in views)
    assert compiled.instrs[-1].op == "end" and len(compiled.static) < compiled.n_beats


def test_weights_past_wbuf_and_rows_past_the_accumulators_split_the_gemm(programs, images):
    """A 2 KiB WBUF (fc1's 12 column blocks two at a time) and 16 accumulator rows (17 tokens in two)."""
    program = programs[("baseline", 4)]
    accel = variant("edge-int4", buffers__weight_kib=2, buffers__accumulator_kib=2)
    compiled = compile_program(program, accel)
    fc1 = [i for i in compiled.instrs if i.note == "blocks.0.fc1" and i.op == "gemm"]
    assert {i["m"] for i in fc1} == {16, 1} and {i["nf"] for i in fc1} == {2} and len(fc1) == 2 * 6
    assert_engine_outputs(program, accel, program_inputs(program, images), samples=1)


def test_bert_encoder_layers_cut_out_of_their_program_run_with_the_key_mask():
    program = bert_program(wbits=8, abits=8)
    body = sub_program(program, [op.name for op in program.ops if op.kind not in ("embedding", "mean_pool")])
    assert [t.name for t in body.inputs] == ["embed.word", "embed.position", "attention_mask"]
    assert body.outputs == [program.ops[-1].inputs[0]]  # what the mean pooling reads
    rng = np.random.default_rng(0)
    tokens = 20
    inputs = {t.name: rng.integers(-(1 << 12), 1 << 12, size=(2, tokens, 64)) for t in body.inputs[:2]}
    inputs["attention_mask"] = np.ones((2, tokens), np.int64)
    inputs["attention_mask"][1, 13:] = 0  # seven padding tokens
    accel = load_accel("edge-int8")
    compiled = compile_program(body, accel, seq_len=tokens)
    assert any(i.flag("mask") for i in compiled.instrs if i.op == "vector" and i["unit"] == "softmax")
    want = engine.run(body, inputs).outputs[body.outputs[0]]
    for s in range(2):
        run = machine.run(compiled.image({k: v[s] for k, v in inputs.items()}), accel)
        assert np.array_equal(compiled.outputs(run.image)[body.outputs[0]], want[s])


def test_every_prefix_of_a_program_runs_to_the_engine_tensors():
    """What rtl-run's bisection compiles: a prefix's outputs are what later ops read (views, accumulators)."""
    program = vit_program(depth=1)
    spec = program.inputs[0]
    lo, hi = intops.int_range(spec.bits, spec.signed)
    x = {spec.name: np.random.default_rng(0).integers(lo, hi + 1, size=(1,) + spec.shape)}
    accel = load_accel("edge-int4")
    for k in range(1, len(program.ops) + 1):
        prefix = sub_program(program, [op.name for op in program.ops[:k]])
        want = engine.run(program, x, keep=prefix.outputs).outputs
        compiled = compile_program(prefix, accel)
        got = compiled.outputs(machine.run(compiled.image({t.name: x[t.name][0] for t in prefix.inputs}), accel).image)
        for name in prefix.outputs:
            assert np.array_equal(got[name], want[name][0]), (program.ops[k - 1].name, name)


# ------------------------------------------------------------------ convolutions
def _conv_inputs(program, samples: int = 2) -> dict:
    spec = program.inputs[0]
    lo, hi = intops.int_range(spec.bits, spec.signed)
    return {spec.name: np.random.default_rng(1).integers(lo, hi + 1, size=(samples,) + spec.shape)}


def _gemms(compiled) -> list[Instr]:
    return [i for i in compiled.instrs if i.op == "gemm"]


@pytest.mark.parametrize("geometry", [
    {},  # 3x3, stride 1, padded 1: a patch row of 9 taps x 2 channel words
    {"stride": 2, "padding": (0, 1, 0, 1)},  # 'SAME' of stride 2: the odd pixel of padding at the end
    {"kernel": 5, "padding": (2, 2, 2, 2), "channels": 40},
    {"kernel": 1, "padding": (0, 0, 0, 0)},  # a product of the pixels as they lie: no gather
    {"kernel": 1, "stride": 2, "padding": (0, 0, 0, 0)},  # a strided 1x1 (a ResNet's downsampling)
    {"bits": 8, "signed": True, "pad_value": -3},  # two digit passes; padding with a zero point of -3
    {"depthwise": True},
    {"depthwise": True, "stride": 2, "padding": (0, 1, 0, 1)},
    {"depthwise": True, "kernel": 5, "padding": (2, 2, 2, 2), "channels": 40},
    {"depthwise": True, "bits": 8, "signed": False, "pad_value": 7},
    {"wbits": 8},  # two weight digit planes on the 4-bit port
    {"then_depthwise": True},  # the first convolution's output stays in ABUF for the second
])
def test_a_convolution_runs_on_the_machine_with_the_engine_outputs(geometry):
    program = conv_program(**geometry)
    accel = load_accel("edge-int4")
    runs = assert_engine_outputs(program, accel, _conv_inputs(program), samples=2)
    compiled = compile_program(program, accel)
    assert [r.cycles for r in runs[0].retired] == compiled.cycles(accel).per_instr
    gathers = [i for i in compiled.instrs if i.op == "vector"]
    if geometry.get("kernel") == 1 and "stride" not in geometry:
        assert not gathers  # the pixels stream as they lie in the input rows loaded from DRAM
    depthwise = geometry.get("depthwise")
    words = 3 if geometry.get("channels") == 40 else 2
    if depthwise:  # one gemm a channel word, one column block of diagonal tiles
        assert {(i["nf"], i["kf"]) for i in _gemms(compiled)} == {(1, (geometry.get("kernel", 3)) ** 2)}
        assert len(_gemms(compiled)) == words
    elif not geometry.get("then_depthwise"):
        assert {i["kf"] for i in _gemms(compiled)} == {geometry.get("kernel", 3) ** 2 * words}


def test_a_large_convolution_runs_in_strips_reloading_the_weights_wbuf_cannot_keep():
    """24 KiB of ABUF: strips of a few output rows, each staged and gathered again; 8 KiB of WBUF: the 4 column
    blocks' weights (432 words each) two at a time, loaded again in every strip."""
    program = conv_program(channels=40, out_channels=64)
    accel = variant("edge-int4", buffers__activation_kib=24, buffers__weight_kib=8)
    assert_engine_outputs(program, accel, _conv_inputs(program), samples=1)
    compiled = compile_program(program, accel)
    stores = [i for i in compiled.instrs if i.op == "store"]
    weights = [i for i in compiled.instrs if i.op == "load" and i["target"] == "wbuf"]
    assert len(stores) > 1 and sum(i["count"] for i in stores) == 9 * 7 * 4  # every output word once
    assert len(weights) == 2 * len(stores) and {i["nf"] for i in _gemms(compiled)} == {2}
    assert len({i["dram"] for i in weights}) == 2  # the image holds each weight block once


def test_a_cnn_layer_with_its_residual_runs_on_the_machine():
    """cnn-digits' first residual block: two convolutions and a 1x1 downsampling reading one input from DRAM,
    their outputs in ABUF for the residual add and its ReLU."""
    program = flows.quantize("cnn-digits", "baseline", 4, 4, progress=False)[0]
    images = next(iter_batches("cnn-digits", "eval", 2))[0]
    inputs = program_inputs(program, images)
    layer = [op.name for op in program.ops if op.name.startswith("layer1.")]
    body = sub_program(program, layer)
    kept = engine.run(program, inputs, keep=[t.name for t in body.inputs]).outputs
    assert_engine_outputs(body, load_accel("edge-int4"), {t.name: kept[t.name] for t in body.inputs}, samples=2)


@pytest.mark.parametrize("change, field, problem", [
    ({"depthwise": False, "groups": 2}, "groups", "grouped convolutions other than depthwise"),
    ({"bits": 16, "signed": False}, "inputs", "'x' is uint16: the patch gather copies through the 16-bit vector adder"),
])
def test_what_the_convolution_lowering_cannot_run_is_refused_by_field(change, field, problem):
    groups = change.pop("groups", None)
    program = conv_program(**change)
    if groups:
        w = program.ops[0].params["weight"]
        program.ops[0].attrs["groups"] = groups
        program.ops[0].params["weight"] = np.ascontiguousarray(w[..., :w.shape[-1] // groups])
        validate(program)
    with pytest.raises(AccelError, match=rf"op 'conv' \(conv2d\): field '{field}': {problem}"):
        compile_program(program, load_accel("edge-int4"))


def test_a_convolution_whose_one_output_row_does_not_fit_abuf_is_refused():
    program = conv_program(size=(9, 40), channels=64, kernel=5, padding=(2, 2, 2, 2))
    with pytest.raises(AccelError, match=r"op 'conv' \(conv2d\): field 'abuf': one output row needs \d+ words"):
        compile_program(program, variant("edge-int4", buffers__activation_kib=16))


# ------------------------------------------------------------------ refusals
def test_a_live_set_larger_than_abuf_is_refused_naming_op_and_words(programs):
    with pytest.raises(AccelError, match=r"op 'patch_embed' \(linear\): field 'abuf': 102 words needed with 16 live; "
                                         r"ABUF holds 16 words \(this compiler does not spill"):
        compile_program(programs[("baseline", 4)], variant("edge-int4", buffers__activation_kib=1))


@pytest.mark.parametrize("key, value, named", [
    ("units__softmax__lanes", 8, "field 'units.softmax.lanes': 8; the joined accelerator needs every vector width "
                                 "equal to array.rows (16)"),
    ("dram_bytes_per_cycle", 6, "field 'dram_bytes_per_cycle': 6.0; the memory port moves a whole power-of-two"),
    ("dram_bytes_per_cycle", 2.5, "field 'dram_bytes_per_cycle': 2.5"),
])
def test_an_accelerator_the_machine_cannot_be_built_from_is_refused(programs, key, value, named):
    with pytest.raises(AccelError, match=named.replace("(", r"\(").replace(")", r"\)")):
        compile_program(programs[("baseline", 4)], variant("edge-int4", **{key: value}))


def test_what_check_program_refuses_is_refused(programs):
    accel = variant("edge-int4", array__act_bits=8)
    with pytest.raises(AccelError, match=r"op 'patch_embed' \(linear\): field 'wbits': int8 weights are wider than "
                                         r"the 4-bit weight port, and weight digit passes need weight_bits = act_bits"):
        compile_program(programs[("baseline", 8)], accel)


@pytest.mark.parametrize("wbits", [6, 8])
def test_weights_wider_than_the_port_run_as_digit_planes(images, wbits):
    """int6 / int8 weights on edge-int4's 4-bit weight port: each linear folds every weight digit plane
    against every activation digit, and the machine gives the engine's outputs with the schedule's cycles;
    an 8 KiB WBUF splits the planes' column blocks too."""
    program = flows.quantize("vit-digits", "baseline", wbits, 4, progress=False)[0]
    for accel in (load_accel("edge-int4"), variant("edge-int4", buffers__weight_kib=8)):
        compiled = compile_program(program, accel)
        gemms = {i.note: i["w_digits"] for i in compiled.instrs if i.op == "gemm" and i["mode"] == "linear"}
        for op in (o for o in program.ops if o.kind == "linear"):
            assert gemms[op.name] == len(intops.weight_digit_planes(op.params["weight"], 4)) >= 2
        assert any(i.op == "gemm" and i["digits"] == 2 and i["w_digits"] >= 2 for i in compiled.instrs)  # 8-bit image
        runs = assert_engine_outputs(program, accel, program_inputs(program, images), samples=1)
        assert [r.cycles for r in runs[0].retired] == compiled.cycles(accel).per_instr


def test_a_multi_digit_stationary_operand_needs_ports_of_one_width(programs, images):
    """Streamed digits shift in act_bits steps whatever the weight port (int8 Q on an int4 act port, int8
    weight port: the machine gives the engine's outputs); a stationary operand's digits need equal ports."""
    program = programs[("baseline", 8)]
    assert_engine_outputs(program, variant("edge-int4", array__weight_bits=8), program_inputs(program, images),
                          samples=1)
    program = flows.quantize("vit-digits", "baseline", 4, 8, progress=False)[0]
    with pytest.raises(AccelError, match=r"op 'blocks.0.scores' \(matmul\): field 'inputs': stationary operand "
                                         r"'blocks.0.k.heads' is int8: its digit passes need weight_bits = act_bits"):
        compile_program(program, variant("edge-int4", array__act_bits=8))


@pytest.mark.parametrize("bits", [6, 8])
def test_wide_activation_products_run_as_balanced_digits(images, bits):
    """W6A6 / W8A8 on edge-int4: Q.K^T streams Q's balanced signed digits against each of K's, P.V takes V's
    digits as its stationary planes; the machine gives the engine's outputs with the schedule's cycles."""
    program = flows.quantize("vit-digits", "baseline", bits, bits, progress=False)[0]
    accel = load_accel("edge-int4")
    compiled = compile_program(program, accel)
    want = intops.signed_digits(bits, 4)
    scores = [i for i in compiled.instrs if i.op == "gemm" and i.note == "blocks.0.scores"]
    context = [i for i in compiled.instrs if i.op == "gemm" and i.note == "blocks.0.context"]
    assert {(i["digits"], i["w_digits"]) for i in scores} == {(want, want)}
    assert {(i["digits"], i["w_digits"]) for i in context} == {(1, want)}
    runs = assert_engine_outputs(program, accel, program_inputs(program, images), samples=1)
    assert [r.cycles for r in runs[0].retired] == compiled.cycles(accel).per_instr


def test_embedding_and_mean_pool_are_refused_for_now():
    program = bert_program()
    with pytest.raises(AccelError, match=r"\(embedding\): field 'kind': embedding lookups are not compiled yet"):
        compile_program(program, load_accel("edge-int4"), seq_len=16)
    body = sub_program(program, [op.name for op in program.ops if op.kind != "embedding"])
    with pytest.raises(AccelError, match=r"\(mean_pool\): field 'kind': mean pooling is not compiled yet"):
        compile_program(body, load_accel("edge-int4"), seq_len=16)


def test_a_text_program_needs_its_token_count():
    program = bert_program()
    body = sub_program(program, [op.name for op in program.ops if op.kind not in ("embedding", "mean_pool")])
    with pytest.raises(AccelError, match="run-time token dimension: compile it with seq_len"):
        compile_program(body, load_accel("edge-int4"))


# ------------------------------------------------------------------ the machine's faults
def _image(instrs: list[Instr], g) -> np.ndarray:
    return np.concatenate([machine.instr_to_beats(i, g) for i in instrs])


def test_an_unknown_opcode_names_the_pc():
    accel = load_accel("edge-int4")
    g = machine.Geometry.of(accel)
    img = _image([Instr("load", {"target": "abuf", "addr": 0, "count": 1, "dram": 0}), Instr("end")], g)
    img[g.instr_beats] = 0x0E  # opcode 14 in slot 0 of the second instruction
    with pytest.raises(machine.MachineError, match=r"pc 1: field 'opcode': unknown opcode 14"):
        machine.run(img, accel)


def test_an_address_past_abuf_names_the_pc_and_field():
    accel = load_accel("edge-int4")
    g = machine.Geometry.of(accel)
    store = Instr("store", {"addr": g.abuf_words - 1, "count": 2, "dram": 0})
    with pytest.raises(machine.MachineError, match=rf"pc 0 \(store\): field 'addr': items \[{g.abuf_words - 1}, "
                                                   rf"{g.abuf_words}\] outside ABUF's {g.abuf_words}"):
        machine.run(_image([store, Instr("end")], g), accel)


def test_a_stream_without_end_stops_at_the_limit():
    accel = load_accel("edge-int4")
    g = machine.Geometry.of(accel)
    load = Instr("load", {"target": "abuf", "addr": 0, "count": 1, "dram": 0})
    with pytest.raises(machine.MachineError, match="pc 3: no 'end' after 3 instructions"):
        machine.run(_image([load] * 4, g), accel, max_instructions=3)


def test_truncated_uniform_log2_fields_out_of_order_are_refused_by_name():
    accel = load_accel("edge-int4")
    g = machine.Geometry.of(accel)
    softmax = Instr("vector", {"unit": "softmax", "rows": 1, "words": 1, "a_base": 0, "a_stride": 1, "out_base": 2,
                               "out_stride": 1, "n_valid": g.v, "knee": 4, "step_bits": 3, "grid_bits": 8},
                    frozenset({"tulq"}))
    with pytest.raises(machine.MachineError, match=r"pc 0 \(vector softmax, tulq\): fields knee 4, step_bits 3, "
                                                   r"grid_bits 8 need knee <= step_bits"):
        machine.run(_image([softmax, Instr("end")], g), accel)


def test_a_result_written_over_its_own_operand_is_refused():
    accel = load_accel("edge-int4")
    g = machine.Geometry.of(accel)
    gelu = {"unit": "gelu", "rows": 2, "words": 2, "a_base": 0, "a_stride": 2, "out_stride": 2, "n_valid": g.v}
    img = _image([Instr("vector", {**gelu, "out_base": 4}), Instr("vector", {**gelu, "out_base": 3}),
                  Instr("end")], g)
    with pytest.raises(machine.MachineError, match=r"pc 1 \(vector\): field 'out_base': result word 3 is also "
                                                   r"read through 'a_base'"):
        machine.run(img, accel)
