#!/usr/bin/env python3
"""Quantize a VGG backbone to int8 for carwatch's CPU path.

carwatch runs this (from `carwatch train --int8` and `make models`); it is not meant to
be run by hand. It reads the backbone's safetensors weights (torchvision names), builds
VGG's `features` with torchvision's layer indices, applies PyTorch's FX post-training
static quantization (x86 backend), calibrates it on the batch carwatch preprocessed
(so preprocessing is carwatch's own), traces and freezes it, and saves TorchScript that
tch's CModule loads. Only the standard library and torch are needed.
"""

import argparse
import json
import struct
import sys

import torch
from torch import nn

CONVS_PER_BLOCK = [2, 2, 4, 4, 4]
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def read_safetensors(path):
    """Name -> tensor, without the safetensors package."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[base + start : base + end]), dtype=DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"]).to(torch.float32)
    return out


def build(weights, widths):
    prefix = "features." if "features.0.weight" in weights else ""
    layers, c_in, index = [], 3, 0
    for block, n in enumerate(CONVS_PER_BLOCK):
        for _ in range(n):
            conv = nn.Conv2d(c_in, widths[block], 3, padding=1)
            conv.weight.data = weights[f"{prefix}{index}.weight"]
            conv.bias.data = weights[f"{prefix}{index}.bias"]
            layers += [conv, nn.ReLU(inplace=False)]
            c_in, index = widths[block], index + 2
        layers.append(nn.MaxPool2d(2, 2))
        index += 1
    return nn.Sequential(*layers).eval()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--weights", required=True)
    p.add_argument("--widths", required=True, help="five channel widths, e.g. 64,128,256,512,512")
    p.add_argument("--calibration", required=True, help="safetensors file with tensor `images` [N,3,224,224]")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--first-conv",
        choices=["int8", "fp32"],
        default="int8",
        help="fp32 keeps the first convolution (raw pixels, 3 channels) out of int8: "
        "closer to fp32, but about a third slower on the CPU",
    )
    a = p.parse_args()

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    widths = [int(w) for w in a.widths.split(",")]
    model = build(read_safetensors(a.weights), widths)
    images = read_safetensors(a.calibration)["images"]
    example = (images[:1],)
    qconfig = get_default_qconfig_mapping("x86")
    if a.first_conv == "fp32":
        # Only 0.4% of the work, but in fp32 it runs on 3-channel NCHW input and its
        # 64-channel output must be quantized: measured a third slower in all.
        qconfig = qconfig.set_module_name("0", None)
    prepared = prepare_fx(model, qconfig, example)
    with torch.no_grad():
        for batch in images.split(8):
            prepared(batch)
    quantized = convert_fx(prepared)
    with torch.no_grad():
        traced = torch.jit.trace(quantized, example)
        frozen = torch.jit.freeze(traced.eval())
    frozen.save(a.out)
    print(f"int8 backbone: {a.out} ({len(images)} calibration images, first convolution {a.first_conv})", file=sys.stderr)


if __name__ == "__main__":
    main()
