"""Pruning, distillation and the compress command (quant.compress, ptq2rtl.compress) on a tiny random BERT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptq2rtl.cli import main
from quant.compress import (PruneConfig, TrainConfig, distill, from_tensors, make_student, parameter_count, prune,
                            prune_heads, remove_heads, spec_tensors, student_layers)
from quant.lower import lower
from quant.methods import get_method
from quant.model import Forward
from sim.accel import load_accel
from sim.cycles import program_cycles
from tests.tiny_models import text_batch, tiny_bert

D, HD, T = 64, 16, 12  # tiny_bert's width and head width; the token count the cost model is asked for


def _program(spec, x):
    return lower(get_method("baseline")(spec.copy(), [(x, None)], 8, 8, progress=False))


def _macs(program, prefix: str) -> int:
    cost = program_cycles(program, load_accel("edge-int8"), seq_len=T)
    return sum(o.macs for o in cost.ops if o.name.startswith(prefix))


def test_pruning_nothing_keeps_the_fp32_function():
    _, spec = tiny_bert()
    x = text_batch()
    with torch.no_grad():
        ref = Forward(spec)(x)
        for cfg in (PruneConfig(), PruneConfig(heads=0.01, ffn=0.001, magnitude=1e-6)):  # fractions that round to 0
            pruned, removed = prune(spec, cfg, [x])
            assert torch.equal(Forward(pruned)(x), ref), cfg
            assert parameter_count(pruned) == parameter_count(spec)
        assert torch.equal(Forward(remove_heads(spec, {}))(x), ref)


def test_a_pruned_heads_weights_vanish_from_the_program_and_its_macs_from_the_cycle_count():
    _, spec = tiny_bert()
    x = text_batch()
    full, pruned = _program(spec, x), _program(remove_heads(spec, {0: [1]}), x)
    keep = np.r_[0:HD, 2 * HD:4 * HD]  # heads 0, 2, 3
    for part in ("q", "k", "v"):
        (w_full,), (w_pruned,) = ([o.params["weight"] for o in p.ops if o.name == f"blocks.0.{part}"]
                                  for p in (full, pruned))
        assert w_pruned.shape == (3 * HD, D)
        np.testing.assert_array_equal(w_pruned, w_full[keep])  # per-row grids: the kept rows are untouched
    (proj,) = [o for o in pruned.ops if o.name == "blocks.0.proj"]
    assert proj.params["weight"].shape == (D, 3 * HD)
    assert [o.attrs["heads"] for o in pruned.ops if o.kind == "split_heads"] == [3, 3, 3, 4, 4, 4]
    # one head's Q, K, V rows and projection columns, and its scores and context products
    gone = 4 * D * HD * T + 2 * T * T * HD
    assert _macs(full, "blocks.0.") - _macs(pruned, "blocks.0.") == gone
    assert _macs(full, "blocks.1.") == _macs(pruned, "blocks.1.")


def test_head_ranking_keeps_a_head_in_every_block_and_removes_the_least_important():
    _, spec = tiny_bert()
    scores = [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.05, 0.9, 0.8, 0.7])]
    pruned, removed = prune_heads(spec, 0.75, scores)
    assert removed == {0: [0, 1, 2], 1: [0, 2, 3]}  # six of eight; block 0 keeps head 3 (its best), block 1 head 1
    assert [pruned.heads_of(b) for b in pruned.blocks] == [1, 1]
    assert pruned.blocks[0].q.w.shape == (HD, D) and torch.equal(pruned.blocks[1].q.w, spec.blocks[1].q.w[HD:2 * HD])


def test_ffn_pruning_narrows_fc1_and_fc2_and_magnitude_pruning_leaves_dense_macs():
    _, spec = tiny_bert()
    x = text_batch()
    narrow, removed = prune(spec, PruneConfig(ffn=0.25), [x])
    assert removed["ffn_width"] == [96, 96]
    assert narrow.blocks[0].fc1.w.shape == (96, D) and narrow.blocks[0].fc2.w.shape == (D, 96)
    sparse, _ = prune(spec, PruneConfig(magnitude=0.5), [x])
    program, full = _program(sparse, x), _program(spec, x)
    w = next(o.params["weight"] for o in program.ops if o.name == "blocks.0.fc1")
    assert (w == 0).mean() >= 0.5  # the zeros reach the integer weights ...
    assert _macs(program, "blocks.") == _macs(full, "blocks.")  # ... and a dense array multiplies them all


def _tokenize(sentences: list[str]) -> dict:
    """A stand-in tokenizer for the tiny model: character codes into its 120-word vocabulary."""
    t = max(len(s) for s in sentences)
    ids = torch.tensor([[ord(c) % 120 for c in s.ljust(t, "\0")] for s in sentences])
    mask = torch.tensor([[1] * len(s) + [0] * (t - len(s)) for s in sentences])
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


SENTENCES = ["A small sentence.", "Another, longer sentence here.", "Third one.", "The last of them all."]


def test_distillation_is_deterministic_under_its_seed():
    _, teacher = tiny_bert()
    student = make_student(teacher, 1, 96, [_tokenize(SENTENCES)])
    assert student_layers(2, 1) == [1] and student.blocks[0].fc1.w.shape == (96, D)
    runs = [distill(student, teacher, [1], SENTENCES, _tokenize, TrainConfig(epochs=2, batch=2, lr=1e-3, seed=seed),
                    progress=False)[0] for seed in (0, 0, 1)]
    a, b, c = (spec_tensors(s)[0] for s in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # another seed, another order of the sentences
    assert any(not torch.equal(a[k], v) for k, v in spec_tensors(student)[0].items())  # it trained


def test_distillation_keeps_the_zeros_of_a_magnitude_pruning():
    _, teacher = tiny_bert()
    sparse, _ = prune(teacher, PruneConfig(magnitude=0.5), [])
    trained, log = distill(sparse, teacher, [0, 1], SENTENCES, _tokenize, TrainConfig(epochs=1, batch=2, lr=1e-3),
                           progress=False)
    assert log["steps"] == 2
    for name in ("q", "fc1"):
        was, now = getattr(sparse.blocks[0], name).w, getattr(trained.blocks[0], name).w
        assert torch.equal(now == 0, was == 0)


def test_a_compressed_spec_rebuilds_from_its_tensors():
    _, spec = tiny_bert()
    x = text_batch()
    pruned = remove_heads(prune(spec, PruneConfig(ffn=0.5), [x])[0], {1: [0, 3]})
    rebuilt = from_tensors(spec, *spec_tensors(pruned))
    with torch.no_grad():
        assert torch.equal(Forward(rebuilt)(x), Forward(pruned)(x))
    assert [rebuilt.heads_of(b) for b in rebuilt.blocks] == [4, 2]


@pytest.mark.parametrize("argv, message", [
    (["--prune", "heads=1.0"], "prune heads=1.0: a fraction in [0, 1)"),
    (["--prune", "layers=2"], "--prune: 'layers=2' is not KEY=VALUE"),
    (["--distill", "layers=two"], "--distill: layers='two' is not a int"),
    (["--method", "repq", "--bits", "4/4/4"], "--bits '4/4/4'"),
    (["-o", "out.safetensors"], "-o writes the integer program: it needs --method"),
    (["--table", "--method", "repq"], "compress --table runs its own combinations"),
])
def test_bad_compress_arguments_are_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compress", "minilm", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
