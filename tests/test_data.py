"""The bundled data: the digits split, the standard-library sentence corpus, image folders."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from ptq2rtl import corpus, vit_digits
from ptq2rtl.models import ModelError, image_folder, iter_batches

# ----------------------------------------------------------------------------- digits


def test_digits_split_is_a_stratified_70_30_split_with_calib_from_train():
    splits = vit_digits.digits_split()
    (x_train, y_train), (x_test, y_test), (x_calib, y_calib) = splits["train"], splits["test"], splits["calib"]
    assert (len(y_train), len(y_test), len(y_calib)) == (1257, 540, vit_digits.CALIB_SIZE)
    assert x_test.shape == (540, 1, 16, 16) and x_test.dtype == torch.float32 and y_test.dtype == torch.int64
    assert torch.equal(x_calib, x_train[: vit_digits.CALIB_SIZE])
    assert np.bincount(y_test.numpy()).min() >= 52  # every class held out in proportion (~54)
    assert torch.equal(vit_digits.digits_split()["test"][0], x_test)  # fixed, not re-drawn


def test_digits_preprocessing_maps_background_and_ink_to_fixed_values():
    blank, full = np.zeros((1, 64)), np.full((1, 64), 16.0)
    assert torch.allclose(vit_digits.preprocess(blank), torch.tensor((0.0 - 0.3) / 0.4))
    assert torch.allclose(vit_digits.preprocess(full), torch.tensor((1.0 - 0.3) / 0.4))


def test_vit_digits_batches_cover_the_held_out_split_and_respect_limit():
    batches = list(iter_batches("vit-digits", "eval", 128))
    assert sum(len(labels) for _, labels in batches) == 540
    images, labels = batches[0]
    assert images.shape == (128, 1, 16, 16) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert sum(len(labels) for _, labels in iter_batches("vit-digits", "calib", 100, limit=150)) == 150


def test_unknown_split_is_refused():
    with pytest.raises(ModelError, match="'train'"):
        iter_batches("vit-digits", "train", 8)


# ----------------------------------------------------------------------------- sentence corpus


def test_corpus_ships_at_least_2000_distinct_sorted_sentences():
    sentences = corpus.load_sentences()
    assert len(sentences) >= corpus.CALIB_SIZE + corpus.EVAL_SIZE
    assert list(sentences) == sorted(set(sentences))


def test_every_shipped_sentence_is_a_prose_sentence_of_6_to_40_words():
    for sentence in corpus.load_sentences():
        assert corpus.is_prose_sentence(sentence), sentence
        assert 6 <= len(sentence.split()) <= 40 and sentence[0].isupper() and sentence.endswith(".")


def test_corpus_splits_have_fixed_sizes_and_are_disjoint():
    calib, evaluation = corpus.corpus_split("calib"), corpus.corpus_split("eval")
    assert (len(calib), len(evaluation)) == (256, 2000)
    assert not set(calib) & set(evaluation)
    assert calib == corpus.corpus_split("calib")


def test_generator_reproduces_the_shipped_corpus():
    shipped = set(corpus.load_sentences())
    regenerated = set(corpus.generate_stdlib_sentences())
    if platform.python_version() == corpus.GENERATED_WITH:
        assert regenerated == shipped
    else:  # docstrings drift a little between Python releases
        assert len(shipped & regenerated) >= 0.8 * len(shipped)


def test_sentence_extraction_keeps_prose_and_drops_code():
    doc = """Return the frobnicated value of the given widget.

    Example::

        >>> frob(widget)
        42

    The widget is never modified by this function. Short one.
    Raises ValueError if x == 3 and the widget is broken in some way.
    """
    assert corpus.sentences_from_docstring(doc) == [
        "Return the frobnicated value of the given widget.",
        "The widget is never modified by this function.",
    ]


def test_minilm_batches_are_int64_token_dicts_padded_to_the_longest():
    inputs, labels = next(iter_batches("minilm", "eval", 16))
    assert labels is None
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    shapes = {tensor.shape for tensor in inputs.values()}
    assert len(shapes) == 1 and next(iter(shapes))[0] == 16 and next(iter(shapes))[1] <= 128
    assert all(tensor.dtype == torch.int64 for tensor in inputs.values())
    assert int(inputs["attention_mask"].sum(1).max()) == inputs["input_ids"].shape[1]  # longest is unpadded
    assert sum(len(i["input_ids"]) for i, _ in iter_batches("minilm", "calib", 100)) == 256


# ----------------------------------------------------------------------------- image folders


def test_image_folder_indexes_classes_by_sorted_subfolder_name(tmp_path: Path):
    from PIL import Image

    for cls in ("zebra", "ant"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / cls / "a.png")
    assert image_folder(tmp_path) == [(tmp_path / "ant" / "a.png", 0), (tmp_path / "zebra" / "a.png", 1)]


def test_missing_data_folder_is_named(tmp_path: Path):
    with pytest.raises(ModelError, match="no such directory"):
        image_folder(tmp_path / "nowhere")


def test_empty_data_folder_is_refused(tmp_path: Path):
    with pytest.raises(ModelError, match=f"{tmp_path}.*no class subfolders"):
        image_folder(tmp_path)


def test_data_folder_without_images_is_refused(tmp_path: Path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(ModelError, match=f"{tmp_path}.*no images"):
        image_folder(tmp_path)


def test_unreadable_image_is_named(tmp_path: Path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ModelError, match="broken.png"):
        next(iter_batches("deit_tiny_patch16_224", "eval", 4, data=str(tmp_path)))


def test_empty_data_folder_is_refused_before_the_first_batch(tmp_path: Path):
    with pytest.raises(ModelError, match="no class subfolders"):
        iter_batches("deit_tiny_patch16_224", "eval", 4, data=str(tmp_path))
