"""Writes a TorchScript detector that follows carwatch's detector contract, for tests.

No detector weights can be downloaded here, so the tests' detector is a deterministic
rule rather than a trained network: a painted vehicle body is saturated colour on a
grey street, so the box around a frame's saturated pixels is the vehicle (one vehicle
per frame; the tests show them one at a time). Input and output are what a YOLO export
with format=torchscript has: [N, 3, S, S] RGB in 0-1, letterboxed with grey 114, and
[N, 4 + C, A] raw anchors (cx, cy, w, h in input pixels, then C class scores). Anchor 0
is the box, scored as class 2 (COCO "car"); anchor 1 is a duplicate shifted by two
pixels with a lower score, for non-maximum suppression to remove; anchor 2 scores
nothing.

usage: make_detector.py OUT.pt [--wrong-shape]
  --wrong-shape writes a module whose output is [N, A, 4 + C] (transposed): carwatch
  must refuse it at start-up, naming the shape.
"""

import sys

import torch

class Saturation(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.classes = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s = x.shape[0], x.shape[2]
        sat = x.max(dim=1).values - x.min(dim=1).values
        mask = sat > 0.25
        ys = torch.arange(s, device=x.device).view(1, s, 1).expand(n, s, s)
        xs = torch.arange(s, device=x.device).view(1, 1, s).expand(n, s, s)
        far = torch.full_like(xs, 10 * s)
        x0 = torch.where(mask, xs, far).flatten(1).min(1).values.float()
        y0 = torch.where(mask, ys, far).flatten(1).min(1).values.float()
        x1 = torch.where(mask, xs, -far).flatten(1).max(1).values.float() + 1
        y1 = torch.where(mask, ys, -far).flatten(1).max(1).values.float() + 1
        found = (mask.flatten(1).sum(1) > 20).float()
        out = torch.zeros(n, 4 + self.classes, 3, device=x.device)
        shifts = [0.0, 2.0]
        scores = [0.9, 0.8]
        for a in range(2):
            shift = shifts[a]
            score = scores[a]
            out[:, 0, a] = (x0 + x1) / 2 + shift
            out[:, 1, a] = (y0 + y1) / 2
            out[:, 2, a] = x1 - x0
            out[:, 3, a] = y1 - y0
            out[:, 4 + 2, a] = score * found
        return out


class Transposed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Saturation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).transpose(1, 2)


def main() -> None:
    out = sys.argv[1]
    module = Transposed() if "--wrong-shape" in sys.argv[2:] else Saturation()
    torch.jit.script(module).save(out)


if __name__ == "__main__":
    main()
