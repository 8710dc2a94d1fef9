#!/usr/bin/env python3
"""Write torchvision's ImageNet VGG-19 weights as safetensors, the file carwatch loads.

Run by `make models` on a machine that can reach download.pytorch.org. The output keeps
torchvision's state-dict names (`features.0.weight`, ...), which is what carwatch's
backbone loader expects; by default only the convolutional part is kept (80 MB instead
of 550 MB), since carwatch never uses VGG's classifier.
"""

import argparse
import pathlib

import torch
from safetensors.torch import save_file
from torchvision.models import VGG19_Weights, vgg19


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="models/vgg19.safetensors", type=pathlib.Path)
    parser.add_argument(
        "--whole",
        action="store_true",
        help="keep the classifier too (carwatch ignores it; the file is 550 MB)",
    )
    args = parser.parse_args()

    model = vgg19(weights=VGG19_Weights.IMAGENET1K_V1).eval()
    if args.whole:
        state = model.state_dict()
    else:
        state = {f"features.{k}": v for k, v in model.features.state_dict().items()}
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"source": "torchvision VGG19_Weights.IMAGENET1K_V1"})
    tmp.replace(args.out)
    total = sum(t.numel() for t in tensors.values())
    print(f"wrote {len(tensors)} tensors ({total / 1e6:.1f} M parameters) to {args.out}")


if __name__ == "__main__":
    main()
