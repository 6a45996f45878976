"""Swin's integer lowering on a small random-weight timm SwinTransformer: window attention, shifted
windows and their regions, the relative position bias, patch merging, padding, the mean-pooled head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from quant.lower import lower
from quant.methods import get_method, method_names
from quant.model import Forward, adapt
from quant.quantizers import program_inputs
from quant.swin import merge_rows, unwindow_rows, window_regions, window_rows
from sim import engine, intops
from sim.accel import AccelError, check_program, load_accel
from sim.compile import compile_program
from sim.ops import OPS
from sim.program import IntegerProgram, Op, ProgramError, TensorSpec, validate

SWIN_T = "swin_tiny_patch4_window7_224"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one torch thread is faster than two contending for a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_swin(seed: int = 0):
    """20x20 images, 2x2 patches: stage 0 has 10x10 tokens (windows of 4x4: padded to 12x12), stage 1
    5x5 after patch merging (padded to 8x8); each stage a plain and a shifted block. Weights at unit gain,
    relative position biases of about a nat, so windows, regions and biases all move the output."""
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(seed)
    model = SwinTransformer(img_size=20, patch_size=2, in_chans=3, num_classes=10, embed_dim=32, depths=(2, 2),
                            num_heads=(2, 4), window_size=4).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "relative_position_bias_table" in name:
                p.copy_(r)
            elif p.dim() >= 2:  # linear and patch-embedding weights
                p.copy_(r / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * r)
            else:
                p.copy_(0.1 * r)
    return model, adapt(model, "tiny-swin", "swin")


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 20, 20, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def swin():
    return tiny_swin()


def fidelity(program: IntegerProgram, model, x: torch.Tensor) -> tuple[float, float]:
    """Mean cosine of the integer logits to FP32's and top-1 agreement."""
    got = torch.from_numpy(engine.run(program, program_inputs(program, x)).outputs[program.outputs[0]]).double()
    with torch.no_grad():
        ref = model(x).double()
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=1).mean().item()
    return cos, (got.argmax(1) == ref.argmax(1)).double().mean().item()


# ---------------------------------------------------------------- index tables
def test_window_tables_pad_to_whole_windows_and_invert():
    rows = window_rows((5, 5), (4, 4), (2, 2))
    assert rows.shape == (4, 16) and np.count_nonzero(rows < 0) == 64 - 25
    assert sorted(rows[rows >= 0].tolist()) == list(range(25))
    assert np.array_equal(rows.reshape(-1)[unwindow_rows(rows)], np.arange(25))
    assert np.array_equal(window_rows((4, 4), (4, 4), (0, 0)), np.arange(16)[None])


def test_patch_merging_pads_an_odd_grid_and_orders_neighbours_row_offset_first():
    m = merge_rows((3, 3))
    assert m.shape == (4, 4)
    assert m[0].tolist() == [0, 3, 1, 4]  # (0,0), (1,0), (0,1), (1,1) as (row, column) offsets
    assert m[3].tolist() == [8, -1, -1, -1]


def test_window_regions_are_timms_shift_mask(swin):
    model, spec = swin
    blocks = [b for stage in model.layers for b in stage.blocks]
    shifted = [(blk, ours) for blk, ours in zip(blocks, spec.blocks) if any(blk.shift_size)]
    assert len(shifted) == 2
    for blk, ours in shifted:
        r = window_regions(blk.input_resolution, blk.window_size, blk.shift_size)
        assert torch.equal(ours.regions, torch.from_numpy(r))
        same = r[:, :, None] == r[:, None, :]
        assert np.array_equal(same, blk.attn_mask.numpy() == 0)
        assert r.max() < 1 << 4  # the region ids the softmax unit compares


# ---------------------------------------------------------------- float forward
def test_adapter_fp32_forward_equals_timms_own(swin):
    model, spec = swin
    assert [b.merge is not None for b in spec.blocks] == [False, False, True, False]
    assert [b.regions is not None for b in spec.blocks] == [False, True, False, True]
    assert all(bool((b.windows < 0).any()) for b in spec.blocks)  # every block pads its windows
    x = images(8, 1)
    with torch.no_grad():
        ref = model(x)
        assert (Forward(spec)(x) - ref).abs().max() < 1e-5 * ref.abs().max()
        for part in ("regions", "rel_bias"):  # each matters: dropping it moves the logits far past the tolerance
            other = spec.copy()
            for b in other.blocks:
                setattr(b, part, None if part == "regions" else b.rel_bias * 0)
            assert (Forward(other)(x) - ref).abs().max() > 1e-2 * ref.abs().max(), part


def test_the_named_swin_models_load_a_checkpoint_and_adapt(tmp_path):
    from safetensors.torch import save_file

    from ptq2rtl import models
    from ptq2rtl.flows import load_spec

    model = models.load_model(SWIN_T, "random")
    path = tmp_path / "swin_t.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    spec = load_spec(SWIN_T, str(path))
    assert spec.family == "swin" and len(spec.blocks) == 12
    assert [i for i, b in enumerate(spec.blocks) if b.merge is not None] == [2, 4, 10]
    assert [tuple(spec.blocks[i].windows.shape[:2]) for i in (0, 2, 4, 10)] == [(64, 49), (16, 49), (4, 49), (1, 49)]
    assert spec.blocks[-1].regions is None  # 7x7 tokens in one 7x7 window: nothing to shift
    assert torch.equal(spec.head.w, model.head.fc.weight)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(Forward(spec)(x), model(x), atol=1e-5)


# ---------------------------------------------------------------- integer programs
@pytest.fixture(scope="module")
def baseline_program(swin):
    _, spec = swin
    return lower(get_method("baseline")(spec.copy(), [(images(16, 2), None)], 8, 8, progress=False))


def test_baseline_w8a8_program_saves_loads_and_runs_integer_only(swin, baseline_program, tmp_path):
    model, _ = swin
    program = baseline_program
    kinds = {op.kind for op in program.ops}
    assert {"gather_rows", "softmax_log2", "mean_pool", "patchify"} <= kinds
    softmax = program.ops_of("softmax_log2")
    assert all("bias" in op.params for op in softmax)
    assert ["regions" in op.params for op in softmax] == [False, True, False, True]
    assert all(np.issubdtype(a.dtype, np.integer) for op in program.ops for a in op.params.values())
    program.save(tmp_path / "swin.safetensors")
    loaded = IntegerProgram.load(tmp_path / "swin.safetensors")
    x = images(64, 3)
    feed = program_inputs(loaded, x)
    assert np.array_equal(engine.run(loaded, feed).outputs[loaded.outputs[0]],
                          engine.run(program, feed).outputs[program.outputs[0]])
    cos, top1 = fidelity(loaded, model, x)
    print(f"tiny Swin baseline W8A8, 64 random images: logit cosine {cos:.4f}, top-1 agreement {100 * top1:.1f} %")
    assert cos > 0.97 and top1 > 0.7


def test_repq_w8a8_program_folds_its_channel_maps_and_pads_with_each_channels_zero(swin):
    model, spec = swin
    plan = get_method("repq")(spec.copy(), [(images(16, 2), None)], 8, 8, progress=False)
    assert {"blocks.2.merge_ln", "blocks.0.ln1", "norm"} <= set(plan.channel_maps)
    program = lower(plan)
    fill = next(op for op in program.ops if op.name == "blocks.0.windows").params["fill"]
    assert len(set(fill.tolist())) > 1  # a real 0 is a different code in each channel of the reparameterized grid
    cos, top1 = fidelity(program, model, images(64, 3))
    print(f"tiny Swin repq W8A8, 64 random images: logit cosine {cos:.4f}, top-1 agreement {100 * top1:.1f} %")
    assert cos > 0.97 and top1 > 0.7


def test_swin_lowering_refuses_truncated_uniform_log2_levels_by_block(swin):
    from quant.quantizers import QuantError

    model, spec = swin
    plan = get_method("repq")(spec.copy(), [(images(8, 4), None)], 8, 8, progress=False)
    plan.softmax_tulq = {"blocks.1.": (1, 3, 6, True)}
    with pytest.raises(QuantError, match=r"writes log2 attention codes only; .* levels in blocks\.1\."):
        lower(plan)


@pytest.mark.parametrize("method", method_names())
def test_every_method_quantizes_swin_to_a_program_the_engine_runs(swin, method):
    model, spec = swin
    x = images(8, 4)
    program = lower(get_method(method)(spec.copy(), [(x, None)], 8, 8, progress=False))
    cos, _ = fidelity(program, model, x)
    assert cos > 0.9, method


def test_a_swin_program_is_estimated_by_the_cost_model_with_the_reason(baseline_program):
    from ptq2rtl.simulate import program_cost

    accel = load_accel("edge-int8")
    check_program(baseline_program, accel)  # every unit can run it
    with pytest.raises(AccelError, match=r"op 'blocks\.0\.windows' \(gather_rows\): field 'kind': row gathers"):
        compile_program(baseline_program, accel)
    cost, basis = program_cost(baseline_program, accel)
    assert basis["kind"] == "estimate" and "gather_rows" in basis["note"] and cost.cycles > 0
    soft = next(o for o in cost.ops if o.name == "blocks.1.softmax")
    assert soft.dram_bytes > 0  # the bias table and the region ids are read



def test_a_swin_program_traces_for_the_rtl_benches(baseline_program):
    from rtl_tests.traces import extract

    program = baseline_program
    result = engine.run(program, program_inputs(program, images(2, 5)), trace_samples=[0, 1])
    vectors = extract(program, result.trace, "tiny-swin")  # each cut is checked against sim.intops
    assert {"mac_array", "requant", "softmax", "gelu", "layernorm"} <= set(vectors)
    assert not vectors["softmax"]["mask"].all()  # rows of shifted windows carry the masked keys of other regions


# ---------------------------------------------------------------- the op extensions
def _softmax_program(params: dict, shape=(2, 2, 4, 4)) -> IntegerProgram:
    t = TensorSpec("t", 16, True, shape)
    q = TensorSpec("q", 4, False, shape)
    op = Op("softmax_log2", "sm", ["t"], ["q"], {"code_bits": 4, "frac_bits": 6}, params)
    return IntegerProgram("toy", [t], ["q"], {"t": t, "q": q}, [op])


def test_softmax_adds_the_bias_with_saturation_and_masks_other_regions():
    rng = np.random.default_rng(0)
    bias = rng.integers(-300, 300, (2, 4, 4)).astype(np.int16)
    regions = np.array([[0, 0, 0, 0], [0, 1, 0, 1]], np.int8)
    program = _softmax_program({"bias": bias, "regions": regions})
    validate(program)
    t = rng.integers(-32768, 32768, (3, 2, 2, 4, 4))
    t[0, ...] = 32767  # the bias saturates at the unit's int16
    q = engine.run(program, {"t": t}).outputs["q"]
    biased = np.clip(t + bias, -32768, 32767)
    valid = np.broadcast_to((regions[:, :, None] == regions[:, None, :])[None, :, None], t.shape)
    assert np.array_equal(q, intops.softmax_log2(biased, valid, 4, 6))
    assert np.all(q[:, 1, :, 0, 1] == 15) and np.all(q[:, 1, :, 1, 0] == 15)  # other region: the zero code
    assert not np.array_equal(q, intops.softmax_log2(t, valid, 4, 6))


@pytest.mark.parametrize("params, field", [
    ({"bias": np.zeros((3, 4, 4), np.int16)}, "bias"),
    ({"regions": np.zeros((3, 4), np.int8)}, "regions"),
    ({"regions": np.full((2, 4), 16, np.int8)}, "regions"),
])
def test_a_bias_or_regions_that_do_not_fit_the_scores_are_refused_by_name(params, field):
    with pytest.raises(ProgramError, match=rf"op 'sm' \(softmax_log2\): field '{field}'"):
        validate(_softmax_program(params))


def _gather_program(index: np.ndarray, fill: np.ndarray | None) -> IntegerProgram:
    x = TensorSpec("x", 8, True, (3, 2))
    y = TensorSpec("y", 8, True, index.shape[:-1] + (index.shape[-1] * 2,))
    params = {"index": index} | ({"fill": fill} if fill is not None else {})
    return IntegerProgram("toy", [x], ["y"], {"x": x, "y": y}, [Op("gather_rows", "g", ["x"], ["y"], {}, params)])


def test_gather_rows_concatenates_the_indexed_rows_and_fills_padding():
    index = np.array([[2, -1], [0, 1]], np.int32)
    program = _gather_program(index, np.array([5, -5], np.int32))
    x = np.arange(12).reshape(2, 3, 2) - 6
    y = engine.run(program, {"x": x}).outputs["y"]
    assert y[1].tolist() == [[4, 5, 5, -5], [0, 1, 2, 3]]
    assert OPS["gather_rows"].uncompiled(program.ops[0])[0] == "kind"


@pytest.mark.parametrize("index, fill, field", [
    (np.array([[3]], np.int32), None, "index"),  # only 3 rows
    (np.array([[-1]], np.int32), None, "fill"),
    (np.array([[-1]], np.int32), np.array([200, 0], np.int32), "fill"),  # outside the input's int8
])
def test_a_gather_outside_its_input_is_refused_by_name(index, fill, field):
    with pytest.raises(ProgramError, match=rf"op 'g' \(gather_rows\): field '{field}'"):
        validate(_gather_program(index, fill))
