"""`source.weights`: a torchvision weights enum (`ResNet18_Weights.IMAGENET1K_V1`) -> its file in the torch hub
cache (downloaded there once, where there is a network), read as any checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from .read import SourceWeights, _read_file, preferred


def weights_enum(name: str) -> Any:
    """The torchvision weights enum member `source.weights` names (`ResNet18_Weights.IMAGENET1K_V1`, with or
    without `torchvision.models.`); its file is not fetched (the preprocessing reads its transforms too)."""
    from torchvision.models import get_weight

    try:
        return get_weight(name.removeprefix("torchvision.models."))
    except (ValueError, KeyError, AttributeError) as e:
        raise UserError(f"source.weights: {name!r} is not a torchvision weights enum ({e}). "
                        "Write it like ResNet18_Weights.IMAGENET1K_V1.") from None


def read_torchvision_weights(name: str) -> SourceWeights:
    import torch

    short = name.removeprefix("torchvision.models.")
    weights = weights_enum(name)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cache.is_file():
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(cache), progress=False)
        except OSError as e:  # URLError is an OSError: no internet
            raise UserError(f"source.weights: cannot download {weights.url} ({e}). Without internet, put the file "
                            f"at {cache} (the torch hub cache; TORCH_HOME moves it).") from None
    src = preferred(_read_file(cache, "auto", False))
    src.description = f"torchvision weights {short}"
    return src
