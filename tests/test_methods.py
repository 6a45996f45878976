"""Each method's distinctive transform, and agreement between what quant believes and what the engine computes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from quant.lower import lower
from quant.methods import get_method, method_names
from quant.methods.apq import bottom_eliminated_error
from quant.methods.fqvit import ln_inputs
from quant.methods.hvit import pow2_attention
from quant.methods.repq import post_ln_points, reparameterize
from quant.model import Forward
from quant.plan import Sites, baseline_plan, chosen_points, collect, linears, paper_forward
from quant.quantizers import QuantError, program_inputs
from sim import engine
from tests.tiny_models import image_batch, text_batch, tiny_bert, tiny_vit


def _with_maps(spec, maps):
    """The float forward where each mapped point carries x / r + delta (no quantization)."""
    def act(name, x):
        if name in maps:
            r, d = maps[name]
            return x / r + d
        return x
    return Forward(spec, act)


def _tiny(family):
    """A tiny model of ``family``, a batch, its FP32 output and its calibration observers."""
    _, spec = tiny_vit() if family == "vit" else tiny_bert()
    x = image_batch() if family == "vit" else text_batch()
    with torch.no_grad():
        return spec, x, Forward(spec)(x), collect(spec, [(x, None)], progress=False)


@pytest.mark.parametrize("family", ["vit", "bert"])
def test_repq_reparameterization_leaves_fp32_output_unchanged(family):
    spec, x, ref, obs = _tiny(family)
    with torch.no_grad():
        new = spec.copy()
        maps = {}
        for point, consumers in post_ln_points(new).items():
            _, r, d = reparameterize(new, point, consumers, obs[point], 4)
            assert not torch.allclose(r, torch.ones_like(r))  # the transform does something
            maps[point] = (r, d)
        out = _with_maps(new, maps)(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["vit", "bert"])
def test_aocq_balancing_is_exact_and_evens_q_against_k(family):
    from quant.methods.aocq import balance

    spec, x, ref, obs = _tiny(family)
    with torch.no_grad():
        new = spec.copy()
        factors = balance(new, obs)
        assert all(not torch.allclose(f, torch.ones_like(f)) for f in factors.values())  # it does something
        assert torch.allclose(Forward(new)(x), ref, atol=1e-4, rtol=1e-4)  # an equivalent transform
        after = collect(new, [(x, None)], progress=False)
    for i in range(len(spec.blocks)):
        q, k = (torch.maximum(after[f"blocks.{i}.{p}"].ch_max.abs(), after[f"blocks.{i}.{p}"].ch_min.abs())
                for p in "qk")
        assert torch.allclose(q, k, rtol=1e-3)  # each channel's range now the same in Q and K


@pytest.mark.parametrize("family", ["vit", "bert"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_mptq_shift_and_smoothing_leave_fp32_output_unchanged(family, alpha):
    from quant.methods.mptq import smooth
    from quant.methods.repq import post_gelu_points

    spec, x, ref, obs = _tiny(family)
    with torch.no_grad():
        new = spec.copy()
        maps = {}
        for point, consumers in {**post_ln_points(new), **post_gelu_points(new)}.items():
            grid, s, delta, chosen = smooth(new, point, consumers, obs[point], 4, wbits=[4] * len(consumers),
                                            alphas=(alpha,))
            assert chosen == alpha
            # the shift is whole grid steps, and the requantizer's zero points lie in the 4-bit range
            steps = delta / grid.scale
            assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 8
            # every channel's calibrated range, shifted and smoothed, lies on the grid
            lo, hi = obs[point].ch_min / s + delta, obs[point].ch_max / s + delta
            assert lo.min() >= grid.qmin * grid.scale * (1 + 1e-5) and hi.max() <= grid.qmax * grid.scale * (1 + 1e-5)
            maps[point] = (s, delta)
        out = _with_maps(new, maps)(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_mptq_shift_bias_sits_on_the_quantized_weights():
    """After the plan, Q(W) (x / s + delta) + b' equals W x + b for the shifted part: the constant a shift
    puts through the quantized weights is carried by the bias."""
    from quant.methods.repq import post_gelu_points
    from quant.quantizers import fake_weight

    spec, x, ref, obs = _tiny("bert")
    plan = get_method("mptq")(spec.copy(), [(x, None)], 4, 4, progress=False)
    consumers = {**post_ln_points(plan.spec), **post_gelu_points(plan.spec)}
    orig = linears(spec)
    for point, (s, delta) in plan.channel_maps.items():
        for name in consumers[point]:
            lin = linears(plan.spec)[name]
            wq = fake_weight(lin.w, plan.weight_scales[name], plan.wbits_of(name))
            # constant part: what the consumer adds for a zero input of the original tensor
            assert torch.allclose(wq @ delta + lin.b, orig[name].b, atol=1e-4)



@pytest.mark.parametrize("family", ["vit", "bert"])
def test_tsptq_outlier_scales_are_two_a_power_of_two_apart_and_exact_in_fp32(family):
    """O-2SF: every channel's ratio is 1 or one common 2**k, its zero point whole grid steps inside the
    grid's range, and the fold into the consumers leaves the FP32 output unchanged."""
    from quant.methods.tsptq import two_scales

    spec, x, _, _ = _tiny(family)
    for blk in spec.blocks:  # two outlier channels in every LayerNorm's output, as trained transformers have
        for norm in (blk.ln1, blk.ln2):
            norm.g[:2] *= 30.0
    with torch.no_grad():
        ref, obs = Forward(spec)(x), collect(spec, [(x, None)], progress=False)
        new = spec.copy()
        maps = {}
        for point, consumers in post_ln_points(new).items():
            grid, r, delta = two_scales(new, point, consumers, obs[point], 4, wbits=[4] * len(consumers))
            values = sorted(set(r.tolist()))
            assert values[0] == 1.0 and len(values) <= 2 and math.log2(values[-1]).is_integer()
            steps = delta / grid.scale
            assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 8
            maps[point] = (r, delta)
        assert any(len(set(r.tolist())) == 2 for r, _ in maps.values())  # some point has outlier channels
        out = _with_maps(new, maps)(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("code_bits", [3, 4, 6])
def test_tsptq_value_aware_grids_align_by_a_shift(code_bits):
    """V-2SF: half the codes on the fine grid (step 1), half on the coarse one (step 2**shift, every level a
    multiple of it: the fine grid shifted left), each value quantized to its nearest level, the decoded
    level at most twice the code's width; the GELU table of a tsptq program writes only those levels."""
    from quant.quantizers import two_scale_grid

    sample = torch.nn.functional.gelu(torch.randn(20000, generator=torch.Generator().manual_seed(0)) * 3)
    grid = two_scale_grid(sample, code_bits)
    lv = grid.levels()
    half = 1 << (code_bits - 1)
    assert len(lv) == 2 * half and torch.all(lv[1:] > lv[:-1])
    assert torch.all(lv[1:half] - lv[:half - 1] == 1)
    assert torch.all(lv[half:] % (1 << grid.shift) == 0) and torch.all(lv[half + 1:] - lv[half:-1] == 1 << grid.shift)
    assert grid.bits <= 2 * code_bits and lv.min() >= -(1 << (grid.bits - 1)) and lv.max() < 1 << (grid.bits - 1)
    v = sample[:500].double() / grid.scale
    nearest = lv[(v[:, None] - lv[None, :].double()).abs().argmin(dim=1)]
    assert np.array_equal(grid.quantize(sample[:500]), nearest.numpy())

    spec, x = tiny_bert()[1], text_batch()
    plan = get_method("tsptq")(spec.copy(), [(x, None)], 4, code_bits, progress=False)
    prog = lower(plan)
    for op in (o for o in prog.ops if o.name.endswith("gelu")):
        levels = set(plan.acts[op.name].levels().tolist())
        assert set(np.unique(op.params["table"]).tolist()) <= levels
        (fc2,) = [o for o in prog.ops if o.inputs == op.outputs]
        assert fc2.attrs["abits"] == plan.acts[op.name].bits > code_bits


def test_mptq_opt_m_two_regions_split_at_zero_and_reach_the_program(monkeypatch):
    """OPT-m: the negative values on the fine grid, the coarse grid 2**m fine steps apart from zero up;
    where it wins (forced here) the GELU table writes only its levels and fc2 reads them at their width."""
    import quant.methods.mptq as mptq
    from quant.methods.repq import post_gelu_points

    spec, x, _, obs = _tiny("bert")
    for point, consumers in post_gelu_points(spec).items():
        err, grid = mptq.opt_m(spec, consumers, obs[point], 4, wbits=[4])
        lv = grid.levels()
        assert lv[:8].tolist() == list(range(-8, 0)) and lv[8] == 0
        assert torch.all(lv[9:] - lv[8:-1] == 1 << grid.shift) and grid.shift in mptq.OPT_M_RATIOS
        assert err >= 0 and err == mptq.opt_m(spec, consumers, obs[point], 4, wbits=[4])[0]
    search = mptq.smooth_search
    monkeypatch.setattr(mptq, "smooth_search", lambda spec, consumers, *a, **k: (
        (float("inf"),) if consumers[0].endswith("fc2") else search(spec, consumers, *a, **k)))
    plan = get_method("mptq")(spec.copy(), [(x, None)], 4, 4, progress=False)
    assert set(plan.meta["opt_m"]) == set(post_gelu_points(spec))
    assert not set(plan.meta["opt_m"]) & set(plan.channel_maps)
    prog = lower(plan)
    for op in (o for o in prog.ops if o.name.endswith("gelu")):
        assert set(np.unique(op.params["table"]).tolist()) <= set(plan.acts[op.name].levels().tolist())
    engine.run(prog, program_inputs(prog, x))

def test_repq_per_tensor_grid_is_the_per_channel_grid():
    """After the map, per-tensor quantization of x / r + delta equals per-channel quantization of x."""
    _, spec = tiny_vit()
    x = image_batch()
    with torch.no_grad():
        obs = collect(spec, [(x, None)], progress=False)
        point = "blocks.0.ln1"
        qp, r, d = reparameterize(spec.copy(), point, [], obs[point], 4)
        vals = {}
        Forward(spec, lambda n, t: vals.setdefault(n, t) if n == point else t)(x)
        h = vals[point]
        q_tensor = torch.clamp(torch.round((h / r + d) / qp.scale) + qp.zero_point, -8, 7)
        s_c = r * qp.scale
        z_c = qp.zero_point + torch.round(d / qp.scale)
        q_channel = torch.clamp(torch.round(h / s_c) + z_c, -8, 7)
    assert (q_tensor != q_channel).float().mean() < 1e-3  # equal up to float ties


def test_hvit_programs_requantize_with_shifts_only():
    for spec, x in ((tiny_vit()[1], image_batch()), (tiny_bert()[1], text_batch())):
        prog = lower(get_method("hvit")(spec.copy(), [(x, None)], 4, 4, progress=False))
        requants = prog.ops_of("requant")
        for op in requants:  # M = 1 (right shift) or a power of two with no right shift (left shift)
            m, s = op.params["m"].astype(np.int64), op.params["shift"]
            assert np.all((m & (m - 1)) == 0) and np.all((m == 1) | (s == 0)), op.name
        assert sum(np.count_nonzero(op.params["m"] != 1) for op in requants) <= sum(
            1 for op in requants if op.name.endswith("scores.requant"))  # left shifts only into the softmax domain
        for op in prog.ops_of("add"):
            for m in (op.attrs["ma"], op.attrs["mb"]):
                assert m & (m - 1) == 0  # alignment by powers of two
        assert all(op.attrs["pow2"] for op in requants)


def test_hvit_attention_rewrite_is_exact_in_float():
    _, spec = tiny_vit()
    x = image_batch()
    new = spec.copy()
    pow2_attention(new)
    for blk in new.blocks:
        e = math.log2(blk.attn_scale * math.log2(math.e))
        assert e == round(e)
    with torch.no_grad():
        assert torch.allclose(Forward(new)(x), Forward(spec)(x), atol=1e-4)


def test_fqvit_narrows_every_layernorm_input_with_power_of_two_factors():
    _, spec = tiny_vit()
    prog = lower(get_method("fqvit")(spec.copy(), [(image_batch(), None)], 8, 8, progress=False))
    lns = prog.ops_of("layernorm")
    assert len(lns) == len(ln_inputs(spec))
    for op in lns:
        shifts = op.params["in_shift"]
        assert shifts.min() >= 0 and shifts.max() <= 3
        assert prog.tensors[op.inputs[0]].bits == 8


def test_apq_bottom_elimination_ignores_the_small_errors():
    target = torch.zeros(100)
    small = torch.full((100,), 0.01)
    big = torch.zeros(100)
    big[:10] = 1.0
    assert bottom_eliminated_error(small, target, None) == pytest.approx(50 * 1e-4)
    assert bottom_eliminated_error(big, target, None) == pytest.approx(10.0)


def test_apq_blockwise_search_never_worsens_the_block_error():
    _, spec = tiny_vit()
    x = image_batch(32)
    base = baseline_plan(spec.copy(), collect(spec, [(x, None)], progress=False), 4, 4)
    apq = get_method("apq")(spec.copy(), [(x, None)], 4, 4, progress=False)
    with torch.no_grad():
        fp = Forward(spec)
        h, _ = fp.embed(x)
        target = fp.block(0, h, None)
        err = [bottom_eliminated_error(paper_forward(p).block(0, h, None), target, None) for p in (base, apq)]
    assert err[1] <= err[0]


@pytest.mark.parametrize("family", ["vit", "bert"])
def test_apq_replayed_search_chooses_what_the_plain_search_chooses(family, monkeypatch):
    """The search replays the hooks ahead of the point it varies; the plan is that of full block runs."""
    from quant.methods import apq as apq_module

    class Plain:  # every block run computed whole
        def __init__(self, fwd):
            pass

        def vary(self, point):
            pass

        def batch(self, j):
            pass

        def recorded(self):
            pass

    spec, x, _, _ = _tiny(family)
    batches = [(x, None), (x, None)]
    replayed = get_method("apq")(spec.copy(), batches, 4, 4, progress=False)
    monkeypatch.setattr(apq_module, "_Replay", Plain)
    plain = get_method("apq")(spec.copy(), batches, 4, 4, progress=False)
    assert replayed.acts == plain.acts and replayed.softmax_sqrt2 == plain.softmax_sqrt2
    assert len({qp.scale for qp in replayed.acts.values()}) > 1


@pytest.mark.parametrize("method", method_names())
def test_every_method_lowers_to_a_valid_program_for_both_families(method):
    for spec, x in ((tiny_vit()[1], image_batch()), (tiny_bert()[1], text_batch())):
        prog = lower(get_method(method)(spec.copy(), [(x, None)], 4, 4, progress=False))
        out = engine.run(prog, program_inputs(prog, x)).outputs[prog.outputs[0]]
        assert out.shape[0] == (x.shape[0] if isinstance(x, torch.Tensor) else x["input_ids"].shape[0])


AGREEMENT_SHORTFALL = {  # measured, not yet at the 99 % target
    "fqvit": "fqvit agrees on 534/540 (98.9 %): its integer LayerNorms on the 8-bit PTF inputs round the row mean "
             "to a whole code and floor the std (~120 codes), moving 7-13 % of their output codes by one step, which "
             "the emulation's float LayerNorm does not follow; the 4-bit log2 attention codes amplify that on six "
             "low-margin images (modelling the integer LayerNorm alone still gives 534); README.md, Quantization "
             "methods, 'Known shortfall: fqvit's emulation agreement'",
}


@pytest.mark.parametrize("method", [
    pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=AGREEMENT_SHORTFALL[m])) if m in AGREEMENT_SHORTFALL
    else m for m in method_names()])
def test_quant_emulation_and_golden_engine_agree_on_vit_digits(method):
    """What quant believes (its fake-quant forward) and what the hardware computes agree on >= 99 % of top-1."""
    from ptq2rtl import flows

    plan = flows.make_plan("vit-digits", method, 8, 8, progress=False)
    program = lower(plan)
    fq = paper_forward(plan, emulate_integer=True)
    agree = n = 0
    for inputs, _ in flows.models.iter_batches("vit-digits", "eval", 256):
        with torch.no_grad():
            a = fq(inputs).argmax(1).numpy()
        b = engine.run(program, program_inputs(program, inputs)).outputs[program.outputs[0]].argmax(1)
        agree += int((a == b).sum())
        n += len(a)
    assert agree / n >= 0.99, f"{method}: {agree}/{n}"


@pytest.mark.parametrize("method", method_names())
def test_every_method_honours_per_site_widths(method):
    """A ``Sites`` override reaches the program: the raised linear's weights and the raised point's
    consumers run at 8 bits, every other linear stays at W4A4, and the program records the overrides."""
    for spec, x, point in ((tiny_vit()[1], image_batch(), "blocks.0.ln2"), (tiny_bert()[1], text_batch(), "blocks.0.ln2")):
        sites = Sites(weights={"blocks.1.fc1" if len(spec.blocks) > 1 else "blocks.0.fc2": 8}, acts={point: 8})
        plan = get_method(method)(spec.copy(), [(x, None)], 4, 4, progress=False, sites=sites)
        prog = lower(plan)
        linear = {op.name: op.attrs for op in prog.ops if op.kind == "linear"}
        (raised,) = sites.weights
        assert linear[raised]["wbits"] == 8
        assert linear["blocks.0.fc1"]["abits"] == 8  # fc1 reads ln2
        assert {a["wbits"] for n, a in linear.items() if n != raised} == {4}
        assert linear["blocks.0.q"]["abits"] == 4
        assert prog.meta["sites"] == sites.as_meta()
        engine.run(prog, program_inputs(prog, x))


def test_sites_refuse_an_unknown_site_or_width_by_name():
    spec = tiny_vit()[1]
    points = chosen_points(spec, (image_batch(), None))
    assert "blocks.0.ln2" in points and "blocks.0.q" in points and "blocks.0.proj" not in points  # proj: residual
    with pytest.raises(QuantError, match="unknown linear 'blocks.9.fc1'"):
        Sites(weights={"blocks.9.fc1": 8}).check(linears(spec), points)
    with pytest.raises(QuantError, match="unknown activation point 'blocks.0.proj'"):
        Sites(acts={"blocks.0.proj": 8}).check(linears(spec), points)
    with pytest.raises(QuantError, match=r"bits of blocks.0.fc1=9 outside"):
        Sites(weights={"blocks.0.fc1": 9}).check(linears(spec), points)


def _block_errors(plan, x, fp):
    """Each block's squared output error (fake-quant block on FP32 inputs vs the FP32 block)."""
    from quant.reconstruct import _float_forward

    fq, ref = paper_forward(plan), _float_forward(plan)
    with torch.no_grad():
        h, mask = fp.embed(x)
        errs = []
        for i in range(len(plan.spec.blocks)):
            errs.append(float((fq.block(i, h, mask) - ref.block(i, h, mask)).pow(2).mean()))
            h = ref.block(i, h, mask)
    return errs


@pytest.mark.parametrize("family", ["vit", "bert"])
def test_reconstruction_keeps_integer_weights_and_lowers_the_block_error(family):
    from quant.methods.repq import reparameterized_plan
    from quant.reconstruct import Schedule, _float_forward, reconstruct

    spec, x, _, obs = _tiny(family)
    plan = reparameterized_plan(spec.copy(), obs, 3, 8)
    fp = _float_forward(plan)
    before = _block_errors(plan, x, fp)
    rounded = {n: plan.int_weight(n, lin.w) for n, lin in linears(plan.spec).items()}
    reconstruct(plan, [(x, None)], Schedule(iters=60, batch=8), progress=False)
    after = _block_errors(plan, x, fp)
    assert sum(after) < 0.9 * sum(before), (before, after)
    moved = []
    for name, lin in linears(plan.spec).items():
        if not name.startswith("blocks."):  # the patch embedding and the head are not reconstructed
            continue
        q = lin.w / plan.weight_scales[name][:, None]
        assert torch.allclose(q, q.round(), atol=1e-4)  # snapped onto the method's grid: integer weights
        moved.append(int(np.abs(plan.int_weight(name, lin.w) - rounded[name]).max()))
    assert max(moved) == 1  # some weights move, and only to their other neighbour
    prog = lower(plan)
    engine.run(prog, program_inputs(prog, x))


def test_reconstruction_is_deterministic_under_its_seed():
    from quant.methods.repq import reparameterized_plan
    from quant.reconstruct import Schedule, reconstruct

    spec, x, _, obs = _tiny("bert")
    runs = []
    for _ in range(2):
        plan = reparameterized_plan(spec.copy(), obs, 4, 4)
        reconstruct(plan, [(x, None)], Schedule(iters=10, batch=2, lr_scale=1e-3), progress=False)
        runs.append((torch.cat([lin.w.flatten() for lin in linears(plan.spec).values()]),
                     [plan.acts[p].scale for p in sorted(plan.acts)]))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]



def test_learned_grid_node_has_the_straight_through_gradients_of_autograd_ops():
    """The one-node learned grid gives the values of the chained ops (divide, straight-through round, clamp,
    scale) and their gradients: to x inside the range only, LSQ's to the step."""
    from quant.reconstruct import _LearnedGrid

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(20000, generator=gen, dtype=torch.float64) * 4).requires_grad_()
    g = torch.randn(20000, generator=gen, dtype=torch.float64)
    grads = []
    for fused in (False, True):
        log_s = torch.tensor(math.log(0.3), dtype=torch.float64, requires_grad=True)
        s = log_s.exp()
        if fused:
            out = _LearnedGrid.apply(x, s, 3, -8, 7)
        else:
            v = x / s
            out = (torch.clamp(v + (torch.round(v) - v).detach() + 3, -8, 7) - 3) * s
        x.grad = None
        (out * g).sum().backward()
        grads.append((out.detach(), x.grad.clone(), log_s.grad.clone()))
    (o0, gx0, gs0), (o1, gx1, gs1) = grads
    assert torch.equal(o0, o1) and torch.allclose(gx0, gx1) and torch.allclose(gs0, gs1)
    assert 0 < int((gx1 == 0).sum()) < x.numel()  # some values clamp (and pass nothing), most do not

def test_bit_decline_steps_down_and_ends_on_the_target_width():
    from quant.reconstruct import _decline_phase

    phases = [_decline_phase(i / 99, 2, 0.5) for i in range(100)]
    ks = [k for k, _ in phases]
    assert ks == sorted(ks) and ks[0] == 1 and set(ks) == {1, 2}
    assert phases[0][1] == 1.0  # starts wholly on the first width of the schedule
    assert all(t == 0.0 for k, t in phases[50:])  # the second half on the target width alone
    assert _decline_phase(0.3, 0, 0.5) == (0, 0.0)  # no schedule: the target from the start


@pytest.mark.parametrize("code_bits", [3, 4])
def test_tpvit_candidates_have_a_uniform_region_and_fit_the_code_budget(code_bits):
    from quant.methods.tpvit import candidates
    from sim import intops, widths

    cands = candidates(code_bits)
    assert cands and {c[3] for c in cands} == {False, True}
    for knee, step, grid, sqrt2 in cands:
        assert 1 <= knee <= step <= grid <= widths.MAX_TULQ_GRID_BITS
        assert intops.tulq_levels(knee, step, grid, sqrt2) <= 1 << code_bits
        # the deepest truncation the budget leaves: one grid step more no longer fits
        assert grid == widths.MAX_TULQ_GRID_BITS or intops.tulq_levels(knee, step, grid + 1, sqrt2) > 1 << code_bits


def test_fake_tulq_is_the_softmax_units_quantizer():
    """quant's float truncated uniform-log2 quantizer gives the level the softmax unit writes on >= 97 % of
    the probabilities (the rest lie at a boundary the unit's fixed-point log2 puts on the other side)."""
    from quant.quantizers import fake_tulq
    from sim import intops, widths

    rng = np.random.default_rng(0)
    t = rng.integers(-900, 300, size=(64, 24))
    f = widths.SOFTMAX_FRAC_BITS
    p = torch.softmax(torch.from_numpy(t / 2**f * math.log(2)), -1)
    for levels in ((1, 3, 10, False), (2, 3, 6, True), (1, 2, 7, True)):
        unit = intops.softmax_tulq(t, None, *levels[:3], sqrt2=levels[3]) / 2.0 ** levels[2]
        fake = fake_tulq(p, *levels).numpy()
        assert np.isclose(unit, fake, rtol=0.01, atol=1e-9).mean() >= 0.97, levels


def test_tpvit_realizes_its_quantizer_where_it_beats_sqrt2_codes_as_a_product_with_v():
    from ptq2rtl import flows

    plan = flows.make_plan("vit-digits", "tpvit", 4, 4, progress=False)
    assert plan.softmax_tulq, "the quantizer pays in no block of vit-digits"
    for pre, report in plan.meta["tulq"].items():
        assert (pre in plan.softmax_tulq) == (report["tulq"] < report["log_sqrt2"])
    program = lower(plan)
    kinds = {op.name: op for op in program.ops}
    for i in range(len(plan.spec.blocks)):
        pre = f"blocks.{i}."
        softmax, context = kinds[pre + "softmax"], kinds[pre + "context"]
        if pre in plan.softmax_tulq:
            assert softmax.kind == "softmax_tulq" and context.kind == "matmul"
            assert not context.attrs["transpose_b"]
            assert program.tensors[pre + "probs"].bits == plan.softmax_tulq[pre][2] + 1
        else:
            assert softmax.kind == "softmax_log2" and softmax.attrs["sqrt2"] and context.kind == "matmul_log2"
