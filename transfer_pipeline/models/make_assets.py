"""Rebuild the shipped checkpoints from a pretrain run.

    python run.py experiment=pretrain_digits hydra.run.dir=outputs/pretrain
    python -m transfer_pipeline.models.make_assets outputs/pretrain/model.safetensors

writes, under transfer_pipeline/assets/:
  digits_cnn_0to4.safetensors   the weights (the default experiment's source)
  digits_cnn_0to4_wrapped.pt    the same weights as a training script of a DDP + torch.compile
                                model would save them: {"state_dict": {"module._orig_mod.<name>": ...}, "epoch": N}
  digits_cnn_0to4_module.pt     the whole pickled nn.Module (needs source.trust_pickle=true)

and the text source of experiment=text_classifier:

    python run.py experiment=pretrain_text hydra.run.dir=outputs/pretrain_text
    python -m transfer_pipeline.models.make_assets --text outputs/pretrain_text/model.safetensors
  text_transformer_sport_food.safetensors
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path, help="model.safetensors of a pretrain_digits (or pretrain_text) run")
    parser.add_argument("--text", action="store_true", help="the weights are a pretrain_text run's")
    parser.add_argument("--epoch", type=int, default=12, help="epoch number stored in the wrapped checkpoint")
    args = parser.parse_args(argv)

    import torch
    from safetensors.torch import load_file

    from . import DigitsCNN

    if args.text:
        shutil.copyfile(args.weights, ASSETS / "text_transformer_sport_food.safetensors")
        print(f"{ASSETS / 'text_transformer_sport_food.safetensors'}  {args.weights.stat().st_size:,} bytes")
        return
    state = load_file(args.weights)
    if args.weights.resolve() != (ASSETS / "digits_cnn_0to4.safetensors").resolve():
        shutil.copyfile(args.weights, ASSETS / "digits_cnn_0to4.safetensors")
    wrapped = {"state_dict": {f"module._orig_mod.{k}": v for k, v in state.items()}, "epoch": args.epoch}
    torch.save(wrapped, ASSETS / "digits_cnn_0to4_wrapped.pt")
    model = DigitsCNN(num_classes=5)
    model.load_state_dict(state)
    torch.save(model, ASSETS / "digits_cnn_0to4_module.pt")
    for p in sorted(ASSETS.glob("digits_cnn_0to4*")):
        print(f"{p}  {p.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
