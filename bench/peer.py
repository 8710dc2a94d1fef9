#!/usr/bin/env python3
"""The Python peer of `carwatch bench pipeline --peer`.

What a competent user would write in an afternoon to do carwatch's job, so that
carwatch's figures have something to be compared with on the same machine, in the
same run, on the same cameras: one thread per camera reading RTSP with OpenCV's FFmpeg
decoder (every frame decoded by `grab`, only frames due at the analysis rate converted
by `retrieve`), a bounded queue that drops the oldest frame, and one inference loop
that batches what is queued, resizes whole frames to 224x224, normalises them as
carwatch does, runs the same backbone file carwatch runs (the int8 TorchScript written
by `carwatch train --int8`, or the fp32 VGG features from the safetensors when the
cascade has none), and the cascade's heads along each image's most likely path (view,
make, model: three small MLPs).

With `--wanted MAKE/MODEL` (`bench pipeline --find-max`) it does the job on wide views
instead, as such a program would: each camera thread finds what moves with OpenCV's
MOG2 background subtractor on a 320-pixel-wide copy of each frame due, and queues a
square crop (10% margin) of the largest moving blob; a camera's passage of the wanted
vehicle is hit when two analysed crops in a row answer its make and model, once until
the vehicle has not been seen for 3 s. Hits per camera are counted over the span.

Prints one JSON object: analysed frames (or crops) per second over the measured span,
frames dropped by the queue, CPU time per analysed frame, hits per camera with
`--wanted`, and what ran. Needs torch, numpy and opencv-python-headless (installed by
`make setup`).
"""

import argparse
import collections
import json
import os
import sys
import threading
import time
import tomllib

import cv2
import numpy as np
import torch

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


# The safetensors reader and the VGG builder are carwatch's own quantizer's (models/),
# so that the peer's fp32 fallback is the network the int8 file was made from.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models"))
from quantize_int8 import build as vgg_features  # noqa: E402
from quantize_int8 import read_safetensors  # noqa: E402


class Cascade:
    """The heads of cascade.toml, evaluated along each image's greedy path."""

    def __init__(self, models):
        with open(os.path.join(models, "cascade.toml"), "rb") as f:
            self.toml = tomllib.load(f)
        self.heads = {}
        for h in self.toml["head"]:
            w = read_safetensors(os.path.join(models, h["weights"])) if h.get("weights") else None
            mlp = None
            if w is not None:
                mlp = (w["0.weight"], w["0.bias"], w["3.weight"], w["3.bias"])
            self.heads[h["id"]] = (h["labels"], h.get("next", {}), mlp)
        self.root = self.toml["root"]

    def run(self, features):
        x = features.float().flatten(1)
        answers = [[] for _ in range(x.shape[0])]
        todo = {self.root: list(range(x.shape[0]))}
        while todo:
            head, rows = todo.popitem()
            labels, nxt, mlp = self.heads[head]
            if mlp is None:
                best = [0] * len(rows)
            else:
                w1, b1, w2, b2 = mlp
                h = torch.relu(torch.nn.functional.linear(x[rows], w1, b1))
                best = torch.softmax(torch.nn.functional.linear(h, w2, b2), -1).argmax(-1).tolist()
            for r, b in zip(rows, best):
                answers[r].append(labels[b])
                if labels[b] in nxt:
                    todo.setdefault(nxt[labels[b]], []).append(r)
        return answers


class Queue:
    """Bounded; a push onto a full queue drops the oldest frame."""

    def __init__(self, capacity):
        self.items = collections.deque()
        self.capacity = capacity
        self.cond = threading.Condition()
        self.dropped = 0

    def push(self, item):
        with self.cond:
            if len(self.items) >= self.capacity:
                self.items.popleft()
                self.dropped += 1
            self.items.append(item)
            self.cond.notify()

    def take(self, most, timeout):
        with self.cond:
            if not self.items:
                self.cond.wait(timeout)
            out = []
            while self.items and len(out) < most:
                out.append(self.items.popleft())
            return out


class Mover:
    """The largest moving blob of a camera's frames, as a square crop of the frame."""

    def __init__(self):
        self.mog = cv2.createBackgroundSubtractorMOG2(history=100, varThreshold=25, detectShadows=False)
        self.kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))

    def crop(self, frame):
        h, w = frame.shape[:2]
        scale = 320.0 / w
        small = cv2.resize(frame, (320, int(round(h * scale))), interpolation=cv2.INTER_AREA)
        mask = self.mog.apply(small)
        mask = cv2.dilate(cv2.morphologyEx(mask, cv2.MORPH_OPEN, self.kernel), self.kernel, iterations=2)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        boxes = [cv2.boundingRect(c) for c in contours]
        boxes = [b for b in boxes if b[2] * b[3] >= 0.01 * mask.shape[0] * mask.shape[1]]
        if not boxes:
            return None
        x, y, bw, bh = max(boxes, key=lambda b: b[2] * b[3])
        side = int(max(bw, bh) * 1.1 / scale)
        side = min(side, w, h)
        cx, cy = (x + bw / 2) / scale, (y + bh / 2) / scale
        x0 = int(min(max(cx - side / 2, 0), w - side))
        y0 = int(min(max(cy - side / 2, 0), h - side))
        return frame[y0 : y0 + side, x0 : x0 + side]


def camera(index, url, fps, queue, stop, status, locate):
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        status[url] = "cannot open"
        return
    status[url] = "streaming"
    mover = Mover() if locate else None
    period, due = 1.0 / fps, time.monotonic()
    while not stop.is_set():
        if not cap.grab():
            status[url] = "stream ended"
            break
        now = time.monotonic()
        if now >= due:
            ok, frame = cap.retrieve()
            if ok:
                item = frame if mover is None else mover.crop(frame)
                if item is not None:
                    queue.push((index, now, item))
            due = max(due + period, now)
    cap.release()


class Passages:
    """Hits on the wanted vehicle per camera: two answers in a row, once per passage."""

    def __init__(self, cameras, wanted):
        self.wanted = wanted
        self.streak = [0] * cameras
        self.last_seen = [-1e9] * cameras
        self.armed = [True] * cameras
        self.hits = [[] for _ in range(cameras)]

    def answer(self, cam, at, path):
        if "/".join(path[-2:]) != self.wanted:
            self.streak[cam] = 0
            return
        if at - self.last_seen[cam] > 3.0:
            self.armed[cam], self.streak[cam] = True, 0
        self.last_seen[cam] = at
        self.streak[cam] += 1
        if self.armed[cam] and self.streak[cam] >= 2:
            self.armed[cam] = False
            self.hits[cam].append(time.monotonic())


def preprocess(frames):
    batch = np.empty((len(frames), 224, 224, 3), dtype=np.float32)
    for i, f in enumerate(frames):
        rgb = cv2.cvtColor(cv2.resize(f, (224, 224), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        batch[i] = (rgb.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True, help="a carwatch models directory (cascade.toml)")
    p.add_argument("--url", action="append", required=True, help="a camera (repeat)")
    p.add_argument("--fps", type=float, default=2.0, help="frames analysed per second per camera")
    p.add_argument("--duration", type=float, default=30.0, help="seconds measured")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    p.add_argument("--batch", type=int, default=8, help="most frames per batch")
    p.add_argument("--queue", type=int, default=16, help="frames queued before the oldest is dropped")
    p.add_argument("--wanted", help="MAKE/MODEL: locate moving vehicles and count hits on this one")
    a = p.parse_args()

    os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
    cascade = Cascade(a.models)
    backbone = cascade.toml["backbone"]
    if backbone.get("int8"):
        torch.backends.quantized.engine = "x86"
        model = torch.jit.load(os.path.join(a.models, backbone["int8"])).eval()
        kind = "int8 TorchScript"
    else:
        weights = read_safetensors(os.path.join(a.models, backbone["file"]))
        model = vgg_features(weights, backbone.get("widths", [64, 128, 256, 512, 512]))
        kind = "fp32"

    queue, stop, status = Queue(a.queue), threading.Event(), {}
    passages = Passages(len(a.url), a.wanted) if a.wanted else None
    threads = [
        threading.Thread(target=camera, args=(i, u, a.fps, queue, stop, status, bool(a.wanted)), daemon=True)
        for i, u in enumerate(a.url)
    ]
    for t in threads:
        t.start()

    analysed, hits = 0, collections.Counter()
    start = time.monotonic()
    measuring_from, base = start + a.warmup, None
    end = measuring_from + a.duration
    with torch.inference_mode():
        while time.monotonic() < end:
            items = queue.take(a.batch, 0.5)
            if not items:
                continue
            answers = cascade.run(model(preprocess([f for _, _, f in items])))
            if passages is not None:
                for (cam, at, _), path in zip(items, answers):
                    passages.answer(cam, at, path)
            frames = items
            now = time.monotonic()
            if now >= measuring_from:
                if base is None:
                    base = (now, time.process_time(), queue.dropped)
                    continue
                analysed += len(frames)
                hits.update("/".join(x) for x in answers)
    stop.set()
    for t in threads:
        t.join(5)
    if base is None:
        sys.exit(f"peer: no frame analysed in {a.warmup + a.duration:.0f} s; cameras: {status}")
    span = time.monotonic() - base[0]
    cpu = time.process_time() - base[1]
    print(
        json.dumps(
            {
                "frames_per_s": analysed / span,
                "analysed": analysed,
                "dropped": queue.dropped - base[2],
                "cpu_ms_per_frame": 1000.0 * cpu / analysed if analysed else 0.0,
                "seconds": span,
                "model": kind,
                "decoder": "OpenCV " + cv2.__version__ + " FFmpeg",
                "threads": torch.get_num_threads(),
                "cameras": status,
                "answers": dict(hits.most_common(3)),
                "hits": None
                if passages is None
                else [sum(1 for t in h if base[0] <= t <= base[0] + a.duration) for h in passages.hits],
            }
        )
    )


if __name__ == "__main__":
    main()
