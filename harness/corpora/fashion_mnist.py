"""Fashion-MNIST as pixel sequences: Debian `dataset-fashion-mnist`, its four gzipped IDX files.

The images of the training file (60,000) and then the test file (10,000), each 28 x 28 grey levels
0..255 in row-major order: 70,000 sequences of 784 tokens, one after another. The labels are not
used (a language model over pixels). The split (one held-out image in every held_out_every) ignores
the files' own train/test division, as every corpus here is split the same way.
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

from .source import Corpus

IMAGE_FILES = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")
IDX_UBYTE_3D = 0x00000803  # IDX magic: unsigned bytes, 3 dimensions
SIDE = 28


@dataclass(frozen=True)
class FashionMNIST(Corpus):
    name: str = "fashion_mnist"
    title: str = "Fashion-MNIST images (70,000 of 28 x 28) as 784-pixel sequences"
    package: str = "Debian dataset-fashion-mnist"
    origin: str = "/usr/share/datasets/fashion-mnist/{train,t10k}-images-idx3-ubyte.gz"
    install: str = "apt-get install -y dataset-fashion-mnist"
    licence: str = "MIT (Expat)"
    token: str = "pixel"
    block_len: int = SIDE * SIDE
    held_out_every: int = 10
    directory: str = "/usr/share/datasets/fashion-mnist"

    def locate(self) -> list[Path]:
        paths = [Path(self.directory) / name for name in IMAGE_FILES]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise self.unavailable(f"no {missing[0]}")
        return paths

    def extract(self, sources: list[Path]) -> bytes:
        return b"".join(read_idx_images(path) for path in sources)


def read_idx_images(path: Path) -> bytes:
    """The pixels of a gzipped IDX image file (n x 28 x 28 unsigned bytes), header checked."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, count, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != IDX_UBYTE_3D or (rows, cols) != (SIDE, SIDE) or len(data) != 16 + count * rows * cols:
        raise ValueError(f"{path}: not an IDX file of {SIDE} x {SIDE} unsigned-byte images "
                         f"(magic={magic:#x}, shape={count}x{rows}x{cols}, {len(data)} bytes)")
    return data[16:]


CORPUS = FashionMNIST()
