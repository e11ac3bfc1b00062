"""Small models that ship with the project: the default experiment's CNN and the scenario models.

make_assets.py remakes the shipped checkpoints in assets/; families.py builds models by name (model=torchvision|
timm|hf). May import errors, and sources (families.py reads a hub id's config.json as hf:// sources are read).
"""

from .digits import DigitsCNN, pretrained_digits_cnn
from .examples import BackboneNet, FeaturesNet, TinyMLP
from .attention import MHATransformer, QKVTransformer
from .conv1d import GPT2StyleTransformer
from .text import TextClassifierOutput, TextTransformer, text_transformer_from_config

__all__ = ["DigitsCNN", "pretrained_digits_cnn", "FeaturesNet", "BackboneNet", "TinyMLP",
           "QKVTransformer", "MHATransformer", "GPT2StyleTransformer",
           "TextTransformer", "TextClassifierOutput", "text_transformer_from_config"]
