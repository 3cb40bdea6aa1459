#!/usr/bin/env python3
"""The way back, checked with PyTorch: loads a state dict written by `pi export --format snl` into
the SNL reference code's own `resnet18_in` with `load_state_dict(strict=True)`, runs it on the
fixture's images (normalised with the reference's CIFAR-10 constants) and compares its logits
with the ones PyTorch computed from the original checkpoint (`logits.npy`).

    pi import --arch resnet18 --checkpoint tests/fixtures/snl-resnet18/checkpoint.pth.tar --out m.safetensors [--fold]
    pi export m.safetensors --format snl --out back.safetensors
    python3 experiments/torch-fixtures/check_export.py --snl-repo /tmp/snlref back.safetensors

Prints one JSON line; exits non-zero when the largest relative difference exceeds 1e-4.
"""
import argparse
import json
import os
import sys
import types

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("exported", help="the file `pi export --format snl` wrote")
    p.add_argument("--snl-repo", required=True, help="a checkout of the SNL reference code")
    p.add_argument("--fixture", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "snl-resnet18"))
    a = p.parse_args()

    import numpy as np
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, os.path.abspath(a.snl_repo))
    from archs_unstructured.cifar_resnet import resnet18_in

    net = resnet18_in(num_classes=10, args=types.SimpleNamespace(dataset="cifar10", stride=1))
    net.load_state_dict(load_file(a.exported), strict=True)
    net.eval()
    raw = np.fromfile(os.path.join(a.fixture, "images.bin"), dtype=np.uint8).reshape(-1, 1 + 3 * 32 * 32)
    pixels = torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).copy()).float()
    x = (pixels / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = net(x).numpy()
    want = np.load(os.path.join(a.fixture, "logits.npy"))
    rel = float((np.abs(logits - want).max(axis=1) / np.abs(want).max(axis=1)).max())
    same = bool((logits.argmax(1) == want.argmax(1)).all())
    print(json.dumps({"exported": a.exported, "strict_load": True, "max_relative_difference": rel, "same_argmax": same}))
    sys.exit(0 if rel < 1e-4 and same else 1)


if __name__ == "__main__":
    main()
