"""A small text transformer used the way a Hugging Face sequence classifier is used.

`TextTransformer(input_ids=..., attention_mask=...)` takes keyword inputs and returns a
`TextClassifierOutput` whose `.logits` are the class scores (so a config says `model.output:
logits`, as for HF's `SequenceClassifierOutput`). Module names follow HF BERT, so mapping and
freezing configs read the same as for a real checkpoint:

    embeddings.word_embeddings      nn.Embedding(vocab_size, dim), row pad_id kept at 0
    embeddings.position_embeddings  nn.Embedding(max_len, dim)
    embeddings.norm                 nn.LayerNorm(dim)
    encoder.layers.N                nn.TransformerEncoderLayer (pre-norm, batch_first)
    encoder.norm                    nn.LayerNorm(dim) (pre-norm layers leave their output unnormalised)
    pooler.dense                    nn.Linear(dim, dim) + tanh, on the mean of the non-padding tokens
    classifier                      nn.Linear(dim, num_classes): the head a new task replaces

`text_transformer_from_config(path_or_dict)` (or `TextTransformer.from_config`) builds it from a
config.json with the constructor's keys, as `AutoModel.from_config` builds an HF model: the
architecture only, with fresh weights. Every parameter is made by its module's own init, so the
model builds on the meta device and the pipeline can initialise what a checkpoint leaves out.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError


@dataclass
class TextClassifierOutput:
    logits: torch.Tensor  # [B, num_classes]
    pooled: torch.Tensor  # [B, dim]: the pooler's output, the classifier's input


class TextEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, max_len: int, dim: int, dropout: float, pad_id: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.position_embeddings = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.dropout(self.norm(x))


class TextEncoder(nn.Module):
    """`depth` independently initialised pre-norm layers and a final LayerNorm.

    (Not nn.TransformerEncoder: it deep-copies one layer, so every layer would start identical.)
    """

    def __init__(self, dim: int, depth: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ffn, dropout=dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)
        return self.norm(x)


class TextPooler(nn.Module):
    """The mean of the tokens the attention mask keeps, then dense + tanh (BERT's pooler on a mean, not [CLS])."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.activation = nn.Tanh()

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        keep = keep.to(x.dtype).unsqueeze(-1)
        mean = (x * keep).sum(1) / keep.sum(1).clamp(min=1)
        return self.activation(self.dense(mean))


class TextTransformer(nn.Module):
    def __init__(self, vocab_size: int, max_len: int, dim: int = 32, depth: int = 2, heads: int = 2, ffn: int = 64,
                 num_classes: int = 2, dropout: float = 0.0, pad_id: int = 0) -> None:
        super().__init__()
        for key, value, low in (("vocab_size", vocab_size, 2), ("max_len", max_len, 1), ("dim", dim, 1),
                                ("depth", depth, 1), ("heads", heads, 1), ("ffn", ffn, 1),
                                ("num_classes", num_classes, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UserError(f"model.{key}={value!r}: must be a whole number >= {low}.")
        if dim % heads:
            raise UserError(f"model.dim={dim}, model.heads={heads}: dim must be a multiple of heads "
                            "(each head sees dim / heads features).")
        if not isinstance(pad_id, int) or isinstance(pad_id, bool) or not 0 <= pad_id < vocab_size:
            raise UserError(f"model.pad_id={pad_id!r}: the padding token's id, in [0, vocab_size={vocab_size}).")
        self.config = {"vocab_size": vocab_size, "max_len": max_len, "dim": dim, "depth": depth, "heads": heads,
                       "ffn": ffn, "num_classes": num_classes, "dropout": dropout, "pad_id": pad_id}
        self.pad_id = pad_id
        self.max_len = max_len
        self.embeddings = TextEmbeddings(vocab_size, max_len, dim, dropout, pad_id)
        self.encoder = TextEncoder(dim, depth, heads, ffn, dropout)
        self.pooler = TextPooler(dim)
        self.classifier = nn.Linear(dim, num_classes)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | Path) -> TextTransformer:
        """Built from a config dict or a config.json with the constructor's keys (fresh weights, like AutoModel.from_config)."""
        return text_transformer_from_config(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TextClassifierOutput:
        """input_ids [B, T] (T <= max_len); attention_mask [B, T]: 1 = a token, 0 = padding (default: ids != pad_id)."""
        if input_ids.ndim != 2:
            raise UserError(f"TextTransformer: input_ids of shape {tuple(input_ids.shape)}; expected [batch, tokens].")
        if input_ids.shape[1] > self.max_len:
            raise UserError(f"TextTransformer: {input_ids.shape[1]} tokens per sequence, more than model.max_len="
                            f"{self.max_len} (its position embeddings); raise model.max_len or shorten the inputs "
                            "(e.g. data.max_len).")
        keep = input_ids != self.pad_id if attention_mask is None else attention_mask.bool()
        if keep.shape != input_ids.shape:
            raise UserError(f"TextTransformer: attention_mask of shape {tuple(keep.shape)} and input_ids of shape "
                            f"{tuple(input_ids.shape)}; they must match.")
        x = self.encoder(self.embeddings(input_ids), padding=~keep)
        pooled = self.pooler(x, keep)
        return TextClassifierOutput(logits=self.classifier(pooled), pooled=pooled)


def text_transformer_from_config(config: Mapping[str, Any] | str | Path) -> TextTransformer:
    """A TextTransformer from a dict or a JSON file (a config.json) whose keys are the constructor's arguments.

    HF-style extra keys that are not arguments (`architectures`, `model_type`, `_name_or_path` ...)
    are ignored; `model_type`, when given, must be `text_transformer`.
    """
    where = "config"
    if isinstance(config, (str, Path)):
        where = str(config)
        try:
            config = json.loads(Path(config).read_text())
        except FileNotFoundError:
            raise UserError(f"{where}: no such config file.") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{where}: not a readable JSON config ({e}).") from None
    if not isinstance(config, Mapping):
        raise UserError(f"{where}: a config is a JSON object of TextTransformer's arguments, not "
                        f"{type(config).__name__}.")
    if config.get("model_type", "text_transformer") != "text_transformer":
        raise UserError(f"{where}: model_type={config['model_type']!r}, not text_transformer.")
    params = inspect.signature(TextTransformer.__init__).parameters
    args = {k: v for k, v in config.items() if k in params and k != "self"}
    missing = [k for k, p in params.items() if k != "self" and p.default is p.empty and k not in args]
    if missing:
        raise UserError(f"{where}: no {', '.join(missing)} (TextTransformer needs them).")
    return TextTransformer(**args)
