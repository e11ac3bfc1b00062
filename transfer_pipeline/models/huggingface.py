"""Hugging Face models built from their config.json, for `model._target_` (needs `pip install transformers`).

    model:
      _target_: transfer_pipeline.models.huggingface.from_config
      config: path/to/config.json        # or the folder holding it, or a dict with model_type
      num_labels: 2                      # any config attribute to change
      output: logits                     # the pipeline takes the logits from the returned object

Nothing is downloaded: the architecture comes from the file, the weights from `source.path`
(a `model.safetensors` or a folder a `save_pretrained` wrote).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError


def from_config(config: str | dict, head: str = "sequence_classification", **overrides: Any) -> Any:
    """`AutoModelFor<head>.from_config(config)`, random weights, the config's attributes changed by `overrides`."""
    try:
        import transformers
    except ImportError:
        raise UserError("model._target_=transfer_pipeline.models.huggingface.from_config: needs the transformers "
                        "package (pip install transformers).") from None
    heads = {"sequence_classification": "AutoModelForSequenceClassification",
             "token_classification": "AutoModelForTokenClassification", "base": "AutoModel"}
    if head not in heads:
        raise UserError(f"model.head={head!r}: choose one of {', '.join(heads)}.")
    if not isinstance(config, dict):
        path = Path(config).expanduser()
        path = path / "config.json" if path.is_dir() else path
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"model.config: cannot read {path} as a config.json ({e}).") from None
    config = dict(config)
    if "model_type" not in config:
        raise UserError("model.config: has no model_type (e.g. bert); a Hugging Face config.json names its "
                        "architecture there.")
    try:
        cfg = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
    except (ValueError, KeyError) as e:
        raise UserError(f"model.config: transformers cannot make a config of it ({e}).") from None
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise UserError(f"model.{key}: {type(cfg).__name__} has no attribute {key!r}.")
        setattr(cfg, key, value)
    return getattr(transformers, heads[head]).from_config(cfg)
