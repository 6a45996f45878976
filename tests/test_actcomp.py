"""Activation compression (quant.actcomp): the packing and projection semantics, their exact folds, the
integer programs against their fake-quant forward, and what the cost model counts of them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from ptq2rtl import flows
from quant import actcomp, cnn
from sim import engine, intops
from sim.accel import load_accel
from sim.cycles import _Plan, program_cycles
from sim.program import ProgramError, validate
from quant.quantizers import program_inputs

MODEL = "cnn-digits"


@pytest.fixture(scope="module")
def setup():
    spec = flows.load_spec(MODEL)
    batches = flows.calibration_batches(MODEL, progress=False)[:2]
    images = torch.cat([x for x, _ in flows.models.iter_batches(MODEL, "eval", 48, limit=48)])
    return spec, batches, images


@pytest.fixture(scope="module")
def plans(setup):
    spec, batches, _ = setup
    out = {}
    for method in ("baseline", "actcomp-mpdr", "actcomp-cap"):
        plan = cnn.calibrate(spec.copy(), method, batches, 8, 8, progress=False)
        plan.meta["model"] = MODEL
        out[method] = (plan, cnn.lower(plan))
    return out


# ------------------------------------------------------------------ intops and the op registry
def test_pack_channels_saturates_each_channel_to_its_width_and_shifts():
    y = np.array([[7, -9, 100, 3], [-1, 2, -100, 0]], dtype=np.int16)
    got = intops.pack_channels(y, np.array([0, 2, 4, 8]), np.array([0, 3, 1, 0]), signed=True)
    assert got.tolist() == [[0, -16, 14, 3], [0, 8, -16, 0]]
    u = intops.pack_channels(np.array([[5, 5, 300]], dtype=np.int16), np.array([0, 2, 8]), np.array([0, 2, 0]),
                             signed=False)
    assert u.tolist() == [[0, 12, 255]]


def test_a_packed_requant_runs_and_its_widths_are_checked(plans):
    prog = plans["actcomp-mpdr"][1]
    ops = [op for op in prog.ops if "pack_bits" in op.params]
    assert ops, "the mpdr plan packs no point"
    op = ops[0]
    too_far = np.minimum(9 - op.params["pack_bits"], 8).astype(np.int32)  # one bit past the output's top
    bad = replace(op, params={**op.params, "pack_shift": too_far})
    with pytest.raises(ProgramError, match=r"field 'pack_shift'.*exceed the int8 output"):
        validate(replace(prog, ops=[bad if o is op else o for o in prog.ops]))
    bad = replace(op, params={**op.params, "pack_bits": op.params["pack_bits"][:-1]})
    with pytest.raises(ProgramError, match=r"field 'pack_shift'.*differs from pack_bits"):
        validate(replace(prog, ops=[bad if o is op else o for o in prog.ops]))


def test_a_projection_must_be_1x1(plans):
    prog = plans["actcomp-cap"][1]
    op = next(o for o in prog.ops if o.kind == "project")
    w = op.params["weight"]
    wide = np.repeat(np.repeat(w, 3, axis=1), 3, axis=2)
    bad = replace(op, params={**op.params, "weight": wide}, attrs={**op.attrs, "padding": [1, 1, 1, 1]})
    with pytest.raises(ProgramError, match=r"a projection is a 1x1 convolution"):
        validate(replace(prog, ops=[bad if o is op else o for o in prog.ops]))


# ------------------------------------------------------------------ the folds, in float
def test_a_projection_folds_exactly_into_its_consumers(setup):
    spec, _, images = setup
    point = "layer2.0.conv1"
    c = spec.convs()[point].w.shape[0]
    gen = torch.Generator().manual_seed(0)
    proj, dec = torch.randn(16, c, generator=gen, dtype=torch.float64), torch.randn(c, 16, generator=gen,
                                                                                    dtype=torch.float64)
    folded = spec.copy()
    actcomp.insert_projection(folded, point, proj, dec, actcomp.consumers(folded)[point])

    def through(name, t):  # the original graph with x replaced by D P x at the point
        return torch.einsum("cr,rk,bkhw->bchw", dec, proj, t.double()).float() if name == point else t

    with torch.no_grad():
        want = cnn.forward(spec, images, through)
        got = cnn.forward(folded, images)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_dropped_channel_means_fold_into_the_pooled_classifier_exactly(setup):
    spec, _, images = setup
    point = "layer4.0.res"  # its only consumer is the global pool
    gen = torch.Generator().manual_seed(1)
    dropped = torch.tensor([3, 17, 40])
    mean = torch.rand(128, generator=gen, dtype=torch.float64)
    folded = spec.copy()
    actcomp._fold_means(folded, actcomp.consumers(folded)[point], dropped, mean)

    def keep(value):
        def hook(name, t):
            if name == point:
                t = t.clone()
                t[:, dropped] = value(t[:, dropped])
            return t
        return hook

    with torch.no_grad():
        want = cnn.forward(spec, images, keep(lambda t: mean[dropped].float()[None, :, None, None].expand_as(t)))
        got = cnn.forward(folded, images, keep(torch.zeros_like))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the integer programs
@pytest.mark.parametrize("method", ["actcomp-mpdr", "actcomp-cap"])
def test_the_program_matches_the_fake_quant_forward(plans, setup, method):
    _, _, images = setup
    plan, prog = plans[method]
    got = engine.run(prog, program_inputs(prog, images)).outputs[prog.outputs[0]]
    scale = plan.acts["logits"].scale
    with torch.no_grad():
        want = cnn.paper_forward(plan)(images).double().numpy() / scale
    # a residual sum rounds onto its own grid before the requantizer rounds it onto a coarse channel's
    # (the float forward rounds once): the two part where a sum falls within half a step of a coarse level
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.97


def test_packed_tensors_are_stored_at_the_sum_of_their_channel_widths(plans):
    accel = load_accel("edge-int8")
    base, packed = (program_cycles(plans[m][1], accel).activation for m in ("baseline", "actcomp-mpdr"))
    prog = plans["actcomp-mpdr"][1]
    saved = 0
    for op in prog.ops:
        if "pack_bits" in op.params:
            h, w, ch = prog.tensors[op.outputs[0]].shape
            saved += (8 * ch - int(op.params["pack_bits"].sum())) * h * w
            assert _Plan(prog, accel, 1, 1).nbytes(op.outputs[0]) == -(-h * w * int(op.params["pack_bits"].sum()) // 8)
    assert saved > 0
    assert base.values == packed.values
    assert base.stored_bytes - packed.stored_bytes == pytest.approx(saved / 8, abs=len(prog.ops))


def test_the_projection_input_is_never_stored_and_runs_on_its_producer_drain(plans):
    accel = load_accel("edge-int8")
    base = program_cycles(plans["baseline"][1], accel)
    prog = plans["actcomp-cap"][1]
    cost = program_cycles(prog, accel)
    projections = [op for op in prog.ops if op.kind == "project"]
    assert projections
    by_name = {o.name: o for o in cost.ops}
    delta = 0
    for op in projections:
        x, z = prog.tensors[op.inputs[0]], prog.tensors[op.name]  # z: the requantized projection
        assert by_name[op.name].fused_into == op.inputs[0]  # the producer conv has the point's name
        assert by_name[op.name + ".requant"].fused_into == op.name
        delta += (int(np.prod(x.shape)) * x.bits - int(np.prod(z.shape)) * z.bits) // 8
    assert base.activation.stored_bytes - cost.activation.stored_bytes == delta


def test_compression_cuts_activation_dram_traffic_when_the_buffer_is_small(plans):
    accel = load_accel("edge-int8")
    small = replace(accel, buffers=replace(accel.buffers, activation_kib=4))
    roomy = [program_cycles(plans[m][1], accel).activation.dram_bytes for m in ("baseline", "actcomp-mpdr")]
    assert roomy[0] == roomy[1]  # nothing spills in 256 KiB: the image in, the logits out
    base, packed = (program_cycles(plans[m][1], small).activation for m in ("baseline", "actcomp-mpdr"))
    assert base.dram_bytes > roomy[0]  # spills
    assert packed.dram_bytes < base.dram_bytes


def test_a_ratio_below_one_is_refused(setup):
    spec, batches, _ = setup
    with pytest.raises(cnn.QuantError, match=r"ratio must be at least 1, got 0.5"):
        actcomp.cap(spec.copy(), batches, 8, 8, progress=False, ratio=0.5)


# ------------------------------------------------------------------ the searches
def test_the_greedy_search_takes_the_cheapest_steps_and_keeps_the_error_budget():
    ladders = [[(0, 0.0), (10, 0.01), (20, 0.5)],  # cheap first step, dear second
               [(0, 0.0), (10, 0.02), (30, 0.03)],  # the jump two levels down is the better rate
               [(0, 0.0), (40, float("inf"))]]  # out of reach
    assert actcomp._greedy(ladders, 100, 0, 0.1) == [1, 2, 0]
    assert actcomp._greedy(ladders, 100, 95, 0.1) == [1, 0, 0]  # stops once the target is met
    assert actcomp._greedy(ladders, 100, 0, 0.035) == [1, 1, 0]  # the two-level jump no longer fits


def test_a_tuned_projection_is_no_worse_than_pca_on_the_consumer_proxy():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(500, 24, generator=gen, dtype=torch.float64) @ torch.randn(24, 24, generator=gen,
                                                                               dtype=torch.float64)
    sigma = x.T @ x / len(x)
    m = torch.randn(10, 24, generator=gen, dtype=torch.float64)
    g = m.T @ m / torch.trace(m @ sigma @ m.T)
    r = 8
    pca = float(actcomp._pca_errors(sigma, g)[r])
    proj, dec, err = actcomp.tune_projection(sigma, g, r)
    e = torch.eye(24, dtype=torch.float64) - dec @ proj
    assert err == pytest.approx(float(torch.trace(g @ e @ sigma @ e.T)), rel=1e-9)  # the O(r C^2) form
    assert err < pca
    assert proj.shape == (r, 24) and dec.shape == (24, r)


def test_the_pca_error_curve_is_the_proxy_of_dropping_the_trailing_components():
    gen = torch.Generator().manual_seed(3)
    a, b, m = (torch.randn(n, 12, generator=gen, dtype=torch.float64) for n in (40, 40, 6))
    fit, test, g = a.T @ a, b.T @ b, m.T @ m
    _, vecs = torch.linalg.eigh(fit)
    for r in (0, 5, 12):
        u = vecs.flip(1)[:, :r]
        q = torch.eye(12, dtype=torch.float64) - u @ u.T
        assert float(actcomp._pca_errors(fit, g, test)[r]) == pytest.approx(float(torch.trace(g @ q @ test @ q)),
                                                                             rel=1e-9, abs=1e-9)


def test_a_channel_grid_that_clips_one_half_of_the_images_is_not_chosen():
    gen = torch.Generator().manual_seed(4)
    low = torch.rand(990, 1, generator=gen, dtype=torch.float64) * 10  # the first half's images stay low
    high = torch.rand(10, 1, generator=gen, dtype=torch.float64) * 200
    x, half = torch.cat([low, high]), torch.cat([torch.zeros(990, dtype=torch.bool), torch.ones(10, dtype=torch.bool)])
    _, pooled = actcomp._channel_errors(x, torch.zeros(1000, dtype=torch.bool), 1.0, 8, False, x.mean(0), [4])
    err, shift = actcomp._channel_errors(x, half, 1.0, 8, False, x.mean(0), [4])
    assert int(pooled[0, 0]) < 4  # all samples together: clipping the rare large values pays
    assert int(shift[0, 0]) == 4  # 15 * 2**4 = 240 covers the second half's values
    worst = max(float(((torch.round(h / 16) * 16 - h) ** 2).mean()) for h in (low, high))
    assert float(err[0, 0]) == pytest.approx(worst)  # the worse half's error
