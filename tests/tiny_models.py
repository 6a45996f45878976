"""Tiny random-weight transformers for fast tests of quantization and the golden engine."""

from __future__ import annotations

import torch

from quant.model import adapt


def tiny_vit(seed: int = 0, depth: int = 2):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=48, depth=depth,
                              num_heads=3, mlp_ratio=2).eval()
    return model, adapt(model, "tiny-vit", "vit")


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64)
    model = BertModel(cfg, add_pooling_layer=False).eval()
    return model, adapt(model, "tiny-bert", "bert")


def image_batch(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def text_batch(n: int = 6, t: int = 12, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 120, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    for i in range(n):  # varied lengths, so padding is exercised
        mask[i, max(2, t - 2 * i):] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
