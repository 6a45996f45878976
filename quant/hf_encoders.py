"""Adapters for the Hugging Face BERT-family encoders: BertModel, DistilBertModel, RobertaModel.

All three are post-LN encoders of one shape and map onto quant.model's
neutral "bert" structure; what differs is said where it is handled:

* BERT (MiniLM): ``quant.model.from_hf_bert`` as it is.
* RoBERTa: BERT's modules and names; its position ids start at
  ``padding_idx + 1`` (``padding_idx`` for padding tokens, which no valid
  token attends to and the mean pool leaves out). The adapter keeps the
  position table from row ``padding_idx + 1`` on, so that position ``i`` of a
  right-padded batch reads the row RoBERTa reads.
* DistilBERT: no token-type embeddings (``type_emb`` is None: no table, no
  add); its layers are named ``attention.{q,k,v,out}_lin``, ``sa_layer_norm``,
  ``ffn.lin1`` / ``ffn.lin2`` and ``output_layer_norm``.

The FFN activation is one of ``quant.model.ACTIVATIONS`` (the GELU unit is a
ROM whose table holds whichever of them the model uses); any other is refused
with a ``QuantError`` naming it, as are decoders.
"""

from __future__ import annotations

import torch

from quant.model import ACTIVATIONS, Block, Transformer, _lin, _norm, from_hf_bert
from quant.quantizers import QuantError

MODEL_TYPES = ("bert", "distilbert", "roberta")


def from_hf_encoder(model: torch.nn.Module, name: str) -> Transformer:
    """The neutral structure of a transformers BertModel, DistilBertModel or RobertaModel."""
    config = model.config
    model_type = getattr(config, "model_type", type(model).__name__)
    if model_type not in MODEL_TYPES:
        raise QuantError(f"{name}: no integer lowering for model_type {model_type!r} "
                         f"(supported: {', '.join(MODEL_TYPES)})")
    if getattr(config, "is_decoder", False):
        raise QuantError(f"{name}: a decoder (is_decoder in config.json): the integer program has no causal mask")
    key = "activation" if model_type == "distilbert" else "hidden_act"
    act = getattr(config, key)
    if act not in ACTIVATIONS:
        raise QuantError(f"{name}: activation {act!r} (config.json {key}) has no integer table "
                         f"(supported: {', '.join(ACTIVATIONS)})")
    if model_type == "distilbert":
        spec = _from_distilbert(model, name)
    else:
        spec = from_hf_bert(model, name)
        if model_type == "roberta":
            spec.pos_emb = spec.pos_emb[config.pad_token_id + 1:].clone()
    spec.act = act
    return spec


def _from_distilbert(model: torch.nn.Module, name: str) -> Transformer:
    emb, config = model.embeddings, model.config
    blocks = []
    for layer in model.transformer.layer:
        att = layer.attention
        blocks.append(Block(
            ln1=_norm(layer.sa_layer_norm), q=_lin(att.q_lin), k=_lin(att.k_lin), v=_lin(att.v_lin),
            proj=_lin(att.out_lin), ln2=_norm(layer.output_layer_norm),
            fc1=_lin(layer.ffn.lin1), fc2=_lin(layer.ffn.lin2),
            attn_scale=(config.dim // config.n_heads) ** -0.5))
    return Transformer(
        family="bert", name=name, dim=config.dim, heads=config.n_heads, blocks=blocks,
        word=emb.word_embeddings.weight.detach().float().clone(),
        pos_emb=emb.position_embeddings.weight.detach().float().clone(), type_emb=None, emb_norm=_norm(emb.LayerNorm))
