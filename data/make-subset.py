#!/usr/bin/env python3
"""Write the bundled Fashion-MNIST subset from the full set (Debian package dataset-fashion-mnist).

Takes the first 6,000 training and the first 1,000 test examples, re-encodes them as IDX files
and gzips them deterministically (mtime=0, no file name), so re-running gives identical bytes.
Usage: python3 data/make-subset.py [SOURCE_DIR] [OUT_DIR]
"""
import gzip
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "fashion-mnist")
COUNTS = {"train": 6000, "t10k": 1000}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path):
    """Return (dims, payload bytes) of an IDX file (gzip or raw), checking magic and length."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        sys.exit(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    payload = raw[4 + 4 * ndim:]
    size = 1
    for d in dims:
        size *= d
    if len(payload) != size:
        sys.exit(f"{path}: payload is {len(payload)} bytes, header says {size}")
    return dims, payload


def write_idx_gz(path, dims, payload):
    """Write an unsigned-byte IDX file, gzip level 9 with mtime 0 and no embedded name."""
    header = struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(">" + "I" * len(dims), *dims)
    with open(path, "wb") as f:
        with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=f, mtime=0) as gz:
            gz.write(header + payload)


def main():
    os.makedirs(OUT, exist_ok=True)
    for split, n in COUNTS.items():
        idims, ipix = read_idx(os.path.join(SRC, f"{split}-images-idx3-ubyte.gz"))
        ldims, labels = read_idx(os.path.join(SRC, f"{split}-labels-idx1-ubyte.gz"))
        if idims[0] != ldims[0] or idims[0] < n:
            sys.exit(f"{split}: {idims[0]} images, {ldims[0]} labels, need {n}")
        per = idims[1] * idims[2]
        write_idx_gz(os.path.join(OUT, f"{split}-images-idx3-ubyte.gz"),
                     (n, idims[1], idims[2]), ipix[:n * per])
        write_idx_gz(os.path.join(OUT, f"{split}-labels-idx1-ubyte.gz"), (n,), labels[:n])
        counts = [0] * 10
        for lab in labels[:n]:
            counts[lab] += 1
        print(f"{split}: {n} examples")
        for c, (name, k) in enumerate(zip(CLASSES, counts)):
            print(f"  {c} {name:<12} {k}")


if __name__ == "__main__":
    main()
