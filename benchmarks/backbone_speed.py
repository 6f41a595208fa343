"""Training cost of backbones at a small image size: forward and backward of a batch's two views side by side.

    python benchmarks/backbone_speed.py [--backbones vit_test_patch4,resnet_test_os8] [--batch 64] [--size 32]

Each repeat times every backbone once, in turn, on the same random images (2 × batch: a contrastive step's two
views), so load that lasts a repeat hits them all; the median repeat counts (the first is warm-up).
Only the backbone is timed (no augmentation, projector or optimiser): the part that differs between them.
The last line is a JSON object: images/s per backbone and each one's ratio to the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from freeatm.runtime.backbones import create_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="vit_test_patch4,resnet_test_os8")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.backbones.split(",")
    backbones = {name: create_backbone(name, args.size) for name in names}
    images = torch.randn(2 * args.batch, 3, args.size, args.size)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name, backbone in backbones.items():
            start = time.perf_counter()
            backbone.forward_features(images).square().mean().backward()
            seconds[name].append(time.perf_counter() - start)
    rate = {name: len(images) / statistics.median(s[1:]) for name, s in seconds.items()}
    for name in names:
        params = sum(p.numel() for p in backbones[name].parameters()) / 1e6
        ratio = rate[name] / rate[names[0]]
        print(f"{name}: {rate[name]:.0f} images/s ({params:.2f} M parameters), ×{ratio:.2f}")
    print(json.dumps({"imagesPerSecond": rate, "ratio": {n: rate[n] / rate[names[0]] for n in names}}))


if __name__ == "__main__":
    main()
