"""Hugging Face encoder folders users bring: BERT, DistilBERT and RoBERTa through the minilm adapter.

Each folder is built here with random weights and a tiny tokenizer (nothing is
downloaded) and evaluated on a small text file of corpus sentences.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch

from ptq2rtl import corpus, flows, models
from ptq2rtl.cli import main
from ptq2rtl.models.registry import ModelError
from quant.lower import gelu_table
from quant.model import ACTIVATIONS
from quant.quantizers import program_inputs
from sim import engine
from sim.program import IntegerProgram

SENTENCES = 64  # a quarter (16) calibrates, the rest (48) evaluates
KINDS = ("bert", "distilbert", "roberta")


def _bert_tokenizer(folder: Path):
    """A WordPiece tokenizer over single characters (and their ``##`` continuations)."""
    from transformers import BertTokenizer

    chars = string.ascii_lowercase + string.digits
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *string.punctuation, *("##" + c for c in chars)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizer(vocab=str(folder / "vocab.txt")), len(vocab)


def _byte_level_tokenizer():
    """A byte-level BPE with no merges: every byte its own token, as GPT-2's byte-to-unicode table spells it."""
    from transformers import RobertaTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *symbols])}
    return RobertaTokenizer(vocab=vocab, merges=[]), len(vocab)


def build_folder(folder: Path, kind: str, **config) -> torch.nn.Module:
    """A 2-layer, 32-wide random-weight encoder of ``kind`` and its tokenizer, saved into ``folder``."""
    import transformers

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    size = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}
    if kind == "roberta":
        tokenizer, vocab = _byte_level_tokenizer()
        model = transformers.RobertaModel(transformers.RobertaConfig(
            vocab_size=vocab, max_position_embeddings=130, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            type_vocab_size=1, **size, **config), add_pooling_layer=False)
    else:
        tokenizer, vocab = _bert_tokenizer(folder)
        if kind == "bert":
            model = transformers.BertModel(transformers.BertConfig(vocab_size=vocab, max_position_embeddings=128,
                                                                   **size, **config), add_pooling_layer=False)
        else:
            model = transformers.DistilBertModel(transformers.DistilBertConfig(
                vocab_size=vocab, max_position_embeddings=128, n_layers=2, dim=32, n_heads=4, hidden_dim=64, **config))
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return model.eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    for kind in KINDS:
        build_folder(root / kind, kind)
    return {kind: root / kind for kind in KINDS}


@pytest.fixture(scope="module")
def sentences_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "sentences.txt"
    path.write_text("\n".join(corpus.load_sentences()[:SENTENCES]) + "\n", encoding="utf-8")
    return path


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------ FP32: the adapter is the model


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_fp32_forward_equals_transformers_forward(folders, sentences_file, kind):
    result = models.fp32_eval(str(folders[kind]), data=str(sentences_file), progress=False)
    assert result["model"] == str(folders[kind])
    assert result["n"] == SENTENCES - SENTENCES // 4 and result["sentences"] == SENTENCES
    assert result["cosine_vs_transformers"] > 0.9999
    assert result["nn_agreement_vs_transformers"] == 1.0


def test_roberta_positions_start_after_the_padding_index(folders):
    model = models.load_model(str(folders["roberta"]))
    spec = flows.load_spec(str(folders["roberta"]))
    first = model.config.pad_token_id + 1
    assert torch.equal(spec.pos_emb, model.embeddings.position_embeddings.weight[first:])
    assert models.input_spec(str(folders["roberta"])) == {"max_length": 128}  # 130 positions less the first two


def test_distilbert_has_no_token_types_and_its_program_takes_none(folders, sentences_file):
    spec = flows.load_spec(str(folders["distilbert"]))
    assert spec.type_emb is None
    program, _ = flows.quantize(str(folders["distilbert"]), "baseline", 8, 8, data=str(sentences_file), progress=False)
    assert [t.name for t in program.inputs] == ["input_ids", "attention_mask"]
    assert not any("token_type" in op.name for op in program.ops)


# ------------------------------------------------------------------ the integer program


@pytest.mark.parametrize("kind", KINDS)
def test_w8a8_integer_program_runs_on_the_engine_close_to_fp32(folders, sentences_file, tmp_path, kind):
    program, _ = flows.quantize(str(folders[kind]), "repq", 8, 8, data=str(sentences_file), progress=False)
    program.save(tmp_path / "p.safetensors")
    program = IntegerProgram.load(tmp_path / "p.safetensors")
    assert program.model == str(folders[kind])
    inputs, _ = next(models.iter_batches(program.model, "eval", 4, data=str(sentences_file)))
    out = engine.run(program, program_inputs(program, inputs)).outputs[program.outputs[0]]
    assert out.dtype.kind == "i" and out.shape == (4, 32)
    result = flows.evaluate_program(program, data=str(sentences_file), progress=False)
    print(f"{kind} repq W8A8 integer vs FP32: cosine {result['cosine']:.6f}, nn agreement {result['nn_agreement']:.4f}")
    assert result["n"] == SENTENCES - SENTENCES // 4
    assert result["cosine"] > 0.999 and result["nn_agreement"] > 0.9


@pytest.mark.parametrize("act", ["gelu_new", "gelu_pytorch_tanh", "relu"])
def test_ffn_activations_are_the_ones_transformers_defines(act):
    from transformers.activations import ACT2FN

    x = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    assert torch.allclose(ACTIVATIONS[act](x), ACT2FN[act](x), atol=1e-12)
    assert (ACTIVATIONS[act](x) - ACTIVATIONS["gelu"](x)).abs().max() > 1e-4  # not the erf GELU by another name


def test_a_relu_distilbert_lowers_a_relu_table(tmp_path, sentences_file):
    folder = tmp_path / "relu"
    build_folder(folder, "distilbert", activation="relu")
    result = models.fp32_eval(str(folder), data=str(sentences_file), limit=16, progress=False)
    assert result["cosine_vs_transformers"] > 0.9999 and result["nn_agreement_vs_transformers"] == 1.0
    program, plan = flows.quantize(str(folder), "baseline", 8, 8, data=str(sentences_file), progress=False)
    op = next(o for o in program.ops if o.kind == "gelu")
    x_qp, y_qp = plan.acts[op.name.replace("gelu", "fc1")], plan.acts[op.name]
    assert (op.params["table"] == gelu_table(x_qp, y_qp, "relu")).all()
    assert (op.params["table"] != gelu_table(x_qp, y_qp, "gelu")).any()


# ------------------------------------------------------------------ the command line


def test_command_line_quantize_eval_and_sweep_a_folder(folders, sentences_file, tmp_path, capsys):
    folder, data = str(folders["bert"]), str(sentences_file)
    assert main(["eval", folder, "--fp32", "--data", data, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cosine_vs_transformers"] > 0.9999
    out = tmp_path / "p.safetensors"
    assert main(["quantize", folder, "--method", "repq", "--wbits", "8", "--abits", "8", "-o", str(out),
                 "--data", data]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--data", data, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == folder and result["protocol"] == "integer" and result["cosine"] > 0.999
    assert main(["sweep", folder, "--methods", "baseline", "--bits", "8", "--data", data, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["paper"]["cosine"] > 0.999 and row["integer"]["cosine"] > 0.999


def _no_config(folder: Path) -> None:
    (folder / "config.json").unlink()


def _set(key: str, value):
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, key: value}))
    return edit


def _no_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def _no_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).unlink()


def _bad_json(folder: Path) -> None:
    (folder / "config.json").write_text("{not json")


def _lacks_a_tensor(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    del state["encoder.layer.1.output.dense.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("breaks, problem", [
    (_no_config, "no config.json"),
    (_bad_json, "config.json is not valid JSON"),
    (_set("model_type", "gpt2"), "model_type 'gpt2' in config.json is not a supported encoder"),
    (_no_weights, "no weights"),
    (_lacks_a_tensor, "the weights lack encoder.layer.1.output.dense.weight"),
    (_no_tokenizer, "no tokenizer"),
    (_set("hidden_act", "silu"), "activation 'silu' (config.json hidden_act) has no integer table"),
    (_set("is_decoder", True), "a decoder"),
])
def test_a_folder_that_is_not_a_supported_encoder_gets_one_line_naming_it(folders, tmp_path, capsys, breaks, problem):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(folders["bert"], folder)
    breaks(folder)
    err = _one_line_error(capsys, ["eval", str(folder), "--fp32", "--limit", "4"])
    assert str(folder) in err and problem in err


def test_a_missing_folder_a_file_and_an_unknown_name_are_told_apart(tmp_path, capsys):
    err = _one_line_error(capsys, ["quantize", str(tmp_path / "nothere"), "-o", str(tmp_path / "p.safetensors")])
    assert f"model folder {tmp_path / 'nothere'}: no such folder" in err
    (tmp_path / "file").write_text("")
    err = _one_line_error(capsys, ["sweep", str(tmp_path / "file"), "--methods", "baseline", "--bits", "8"])
    assert f"model folder {tmp_path / 'file'}: not a folder" in err
    err = _one_line_error(capsys, ["eval", "my-bert", "--fp32"])
    assert "unknown model 'my-bert'" in err and "local Hugging Face encoder folder" in err
    assert not (tmp_path / "p.safetensors").exists()


def test_a_folder_loads_its_own_weights_only(folders):
    with pytest.raises(ModelError, match="the weights come from the folder"):
        models.load_model(str(folders["bert"]), "weights.pth")


# ------------------------------------------------------------------ a user's text file


def test_a_text_file_splits_a_quarter_for_calibration_and_the_rest_for_evaluation(tmp_path):
    path = tmp_path / "s.txt"
    lines = [f"Sentence number {i} of the file." for i in range(40)]
    path.write_text("\n".join(lines + ["", "  " + lines[0] + "  "]) + "\n", encoding="utf-8")  # blank, repeat
    calib, evaluation = corpus.text_file_split(path, "calib"), corpus.text_file_split(path, "eval")
    assert len(calib) == 10 and len(evaluation) == 30
    assert sorted(calib + evaluation) == sorted(lines)


def test_minilm_takes_a_text_file_too(sentences_file):
    (inputs, _), *rest = models.iter_batches("minilm", "calib", 64, data=str(sentences_file))
    assert not rest and inputs["input_ids"].shape[0] == SENTENCES // 4
    assert models.text_order("calib", data=str(sentences_file)) == sorted(
        corpus.text_file_split(sentences_file, "calib"), key=len)


def test_a_text_file_of_the_whole_corpus_splits_as_the_corpus():
    assert corpus.text_file_split(corpus.SENTENCES_FILE, "calib") == corpus.corpus_split("calib")
    assert corpus.text_file_split(corpus.SENTENCES_FILE, "eval") == corpus.corpus_split("eval")


@pytest.mark.parametrize("content, problem", [
    ("One.\nTwo.\nOne.\n\nThree.\n", "3 distinct sentences; need at least 4"),
    (b"caf\xe9 au lait.\n", "not UTF-8 text"),
])
def test_a_bad_text_file_is_named(tmp_path, content, problem):
    path = tmp_path / "s.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ModelError, match=f"data file {path}: {problem}"):
        models.iter_batches("minilm", "eval", 8, data=str(path))
