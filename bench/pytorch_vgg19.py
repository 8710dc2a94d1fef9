#!/usr/bin/env python3
"""VGG-19 `features` throughput in PyTorch, for comparison with `carwatch bench model`.

What an operator would otherwise write, measured on the same machine in the same run:
eager fp32, bf16 with channels_last (CPUs with native bf16), FX post-training int8 (x86
backend, CPU), and on CUDA eager fp16/bf16 channels_last and torch.compile. Random
weights: speed does not depend on their values. Prints one JSON array with the fields
`carwatch bench model --json` uses (plus `impl`).

    .venv/bin/python bench/pytorch_vgg19.py [--batches 1,4,8,16,32] [--seconds 3]
"""

import argparse
import json
import sys
import time

import torch
from torch import nn

CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
GFLOP = 39.0


def features():
    layers, c = [], 3
    for v in CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers).eval()


def timed(fn, x, seconds, warmup, sync):
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        sync()
        n, start = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - start < seconds:
            fn(x)
            n += 1
        sync()
        return n, time.perf_counter() - start


def row(device, precision, impl, batch, n, secs):
    ips = n * batch / secs
    return {"device": device, "precision": precision, "impl": impl, "batch": batch,
            "img_per_s": ips, "ms_per_batch": 1000 * secs / n, "gflops": ips * GFLOP}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batches", default=None)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip", default="", help="comma-separated impls to skip (e.g. compile)")
    p.add_argument("--compile-mode", default="max-autotune-no-cudagraphs",
                   help="torch.compile mode (default compiles in seconds, max-autotune in minutes)")
    a = p.parse_args()
    cuda = torch.cuda.is_available() if a.device == "auto" else a.device.startswith("cuda")
    batches = [int(b) for b in (a.batches or ("1,8,32,64,128,256" if cuda else "1,4,8,16,32")).split(",")]
    skip = set(filter(None, a.skip.split(",")))
    out = []
    torch.manual_seed(0)
    if cuda:
        dev = torch.device("cuda")
        sync = torch.cuda.synchronize
        torch.backends.cudnn.benchmark = True
        for dtype, name in [(torch.float16, "fp16"), (torch.bfloat16, "bf16")]:
            m = features().to(dev, dtype).to(memory_format=torch.channels_last)
            variants = [("pytorch-eager", m)]
            if "compile" not in skip:
                variants.append(("pytorch-compile", torch.compile(m, mode=a.compile_mode)))
            for impl, fn in variants:
                for b in batches:
                    x = torch.randn(b, 3, 224, 224, device=dev, dtype=dtype).to(memory_format=torch.channels_last)
                    n, secs = timed(fn, x, a.seconds, a.warmup + (3 if impl == "pytorch-compile" else 0), sync)
                    out.append(row("cuda:0", name, impl, b, n, secs))
                    print(out[-1], file=sys.stderr)
    else:
        sync = lambda: None  # noqa: E731
        m = features()
        for b in batches:
            x = torch.randn(b, 3, 224, 224)
            n, secs = timed(m, x, a.seconds, a.warmup, sync)
            out.append(row("cpu", "fp32", "pytorch-eager", b, n, secs))
            print(out[-1], file=sys.stderr)
        if "bf16" not in skip:
            mb = features().to(torch.bfloat16).to(memory_format=torch.channels_last)
            for b in batches:
                x = torch.randn(b, 3, 224, 224).to(torch.bfloat16).to(memory_format=torch.channels_last)
                n, secs = timed(mb, x, a.seconds, a.warmup, sync)
                out.append(row("cpu", "bf16", "pytorch-eager-channels-last", b, n, secs))
                print(out[-1], file=sys.stderr)
        if "int8" not in skip:
            from torch.ao.quantization import get_default_qconfig_mapping
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
            torch.backends.quantized.engine = "x86"
            example = (torch.randn(1, 3, 224, 224),)
            prepared = prepare_fx(features(), get_default_qconfig_mapping("x86"), example)
            with torch.no_grad():
                for _ in range(4):
                    prepared(torch.randn(8, 3, 224, 224))
            q = convert_fx(prepared)
            for b in batches:
                x = torch.randn(b, 3, 224, 224)
                n, secs = timed(q, x, a.seconds, a.warmup, sync)
                out.append(row("cpu", "int8", "pytorch-fx-int8", b, n, secs))
                print(out[-1], file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
