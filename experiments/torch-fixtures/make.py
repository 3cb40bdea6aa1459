#!/usr/bin/env python3
"""Writes the PyTorch fixtures of `tests/torch_fixtures.rs` with PyTorch itself and the SNL
reference code's own network definition, so that CI (which cannot install torch) checks that a
checkpoint imported here computes what it computed in PyTorch.

What it writes into OUT (default: tests/fixtures/snl-resnet18):
- `checkpoint.pth.tar`: `torch.save({'arch', 'state_dict', 'optimizer'})` exactly as the
  reference's `snl_finetune_unstructured.py` saves its best checkpoint, of `resnet18_in` for
  CIFAR-10 with binary alphas (a linearized network, 10% of the ReLUs kept).
- `images.bin`: a few 32x32 RGB images in the CIFAR-10 binary format (label byte, then 3,072
  pixel bytes, channel-major); each label is PyTorch's prediction.
- `logits.npy`: float32 `[images, 10]`, the logits PyTorch computed in eval mode from the images
  normalised with the reference code's CIFAR-10 constants (its `datasets.py`).
- `fixture.json`: how it was made (versions, the reference commit, seeds, ReLU counts).

The weights are random, not trained: the test is about computing the same function, and random
weights exercise every tensor. Most weights are zero and the others one of a few values per
tensor, and every kernel is zero or one of 16 per tensor (with a random sign), so that git stores
the 45 MB checkpoint in well under 1 MB; the BatchNorm statistics and affine parameters are dense.

Usage (needs torch and numpy; the reference code at a local path):

    git clone https://github.com/NYU-DICE-Lab/selective_network_linearization /tmp/snlref
    python3 experiments/torch-fixtures/make.py --snl-repo /tmp/snlref
"""
import argparse
import json
import os
import subprocess
import sys
import types

# The reference code's CIFAR-10 normalisation (datasets.py: _CIFAR10_MEAN, _CIFAR10_STDDEV).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
# BatchNorm scales are drawn from U(SCALE[1], SCALE[1] + SCALE[0]): a mostly linear network's
# activations grow as the product of its scales, and these keep the logits in the tens, as trained
# networks' are, with varied predictions.
SCALE = (0.4, 0.6)




def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--snl-repo", required=True, help="a checkout of the SNL reference code")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "snl-resnet18"))
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--keep", type=float, default=0.1, help="fraction of ReLUs kept (alpha 1)")
    p.add_argument("--density", type=float, default=0.1, help="fraction of nonzero conv/linear weights")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    import numpy as np
    import torch

    sys.path.insert(0, os.path.abspath(a.snl_repo))
    from archs_unstructured.cifar_resnet import resnet18_in  # the reference's own network

    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    net = resnet18_in(num_classes=10, args=types.SimpleNamespace(dataset="cifar10", stride=1))
    with torch.no_grad():
        for name, t in net.named_parameters():
            if name.endswith(".alphas"):
                t.copy_((torch.rand(t.shape, generator=gen) < a.keep).float())
            elif t.dim() >= 2:  # conv and linear weights: sparse, a few levels (compressible)
                fan_in = t[0].numel()
                level = (2.0 / fan_in / a.density) ** 0.5
                # Every kernel (one input channel of one output channel) is zero or one of a pool
                # of 16 per tensor, with a random sign: zlib (git) stores zero runs and repeated
                # kernels as back-references. The values are a few levels each.
                spatial = t.shape[2:]
                sign = torch.randint(0, 2, (16, *spatial), generator=gen).float() * 2 - 1
                pool = sign * torch.randint(1, 4, (16, *spatial), generator=gen).float() / 2 * level
                pick = torch.randint(0, 16, t.shape[:2], generator=gen)
                keep = (torch.rand(t.shape[:2], generator=gen) < a.density).float()
                flip = torch.randint(0, 2, t.shape[:2], generator=gen).float() * 2 - 1
                scale = (keep * flip).view(*t.shape[:2], *([1] * len(spatial)))
                t.copy_(pool[pick] * scale + 0.0)  # + 0.0: no -0.0 (its sign bit defeats compression)
            elif name.endswith(".weight"):  # BatchNorm scales
                t.copy_(torch.rand(t.shape, generator=gen) * SCALE[0] + SCALE[1])
            else:  # biases
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.2)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) * 1.5 + 0.5)
    net.eval()

    # Smooth images with noise (closer to photographs than uniform noise), as uint8 CHW.
    n = a.images
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    images = []
    for i in range(n):
        phase = torch.rand(3, 1, 1, generator=gen) * 6.28
        freq = torch.rand(3, 1, 1, generator=gen) * 0.4 + 0.05
        base = 127.5 + 90 * torch.sin(freq * xx + phase) * torch.cos(freq * yy - phase)
        noise = torch.randn(3, 32, 32, generator=gen) * 20
        images.append((base + noise).clamp(0, 255).round().to(torch.uint8))
    pixels = torch.stack(images)
    x = (pixels.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = net(x)
    labels = logits.argmax(dim=1)

    os.makedirs(a.out, exist_ok=True)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    torch.save({"arch": "resnet18_in", "state_dict": net.state_dict(), "optimizer": optimizer.state_dict()},
               os.path.join(a.out, "checkpoint.pth.tar"))
    with open(os.path.join(a.out, "images.bin"), "wb") as f:
        for i in range(n):
            f.write(bytes([int(labels[i])]) + pixels[i].numpy().tobytes())
    np.save(os.path.join(a.out, "logits.npy"), logits.numpy().astype(np.float32))
    alphas = [t for name, t in net.named_parameters() if name.endswith(".alphas")]
    commit = subprocess.run(["git", "-C", a.snl_repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {
        "made_by": "experiments/torch-fixtures/make.py",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "reference": "https://github.com/NYU-DICE-Lab/selective_network_linearization",
        "reference_commit": commit or "(not a git checkout)",
        "arch": "resnet18_in",
        "dataset": "cifar10",
        "normalization": {"mean": MEAN, "std": STD},
        "seed": a.seed,
        "density": a.density,
        "images": n,
        "relus_total": int(sum(t.numel() for t in alphas)),
        "relus_kept": int(sum(int(t.sum()) for t in alphas)),
        "labels": labels.tolist(),
    }
    with open(os.path.join(a.out, "fixture.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
