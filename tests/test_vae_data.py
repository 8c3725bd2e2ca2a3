"""VAE data: the IDX reader on files written here, the seeded split, binarization, clear errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gradest.errors import GradestError
from gradest.rng import make_generator
from gradest.vae.data import absolute_spec, binarize, load_images, read_idx


def idx_bytes(array: np.ndarray) -> bytes:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 5, 3)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 5, 3)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        raw = idx_bytes(a)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_dir_reads_idx_files(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist(tmp_path / "m", gz=gz)
    data = load_images(f"mnist:{tmp_path / 'm'}", make_generator(0))
    assert data.shape == (5, 3)
    expected = arrays["train-images-idx3-ubyte"].reshape(6, 15) / 255.0
    torch.testing.assert_close(data.train, torch.tensor(expected, dtype=torch.float32))
    assert data.test.shape == (4, 15)
    assert data.test_labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_read_idx_round_trip(tmp_path: Path) -> None:
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(a))
    assert np.array_equal(read_idx(tmp_path / "a"), a)


def test_truncated_idx_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(idx_bytes(np.zeros((2, 3, 4)))[:-5])
    with pytest.raises(GradestError, match="truncated"):
        read_idx(tmp_path / "a")


def test_not_an_idx_file(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"<html>not mnist</html>")
    with pytest.raises(GradestError, match="not an IDX file"):
        read_idx(tmp_path / "a")


def test_missing_mnist_file_names_it(tmp_path: Path) -> None:
    write_mnist(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(GradestError, match="t10k-labels-idx1-ubyte"):
        load_images(f"mnist:{tmp_path / 'm'}", make_generator(0))


def test_unknown_dataset() -> None:
    with pytest.raises(GradestError, match="digits, mnist5k or mnist:DIR"):
        load_images("cifar", make_generator(0))


def test_split_is_fixed_by_the_seed_and_disjoint() -> None:
    a = load_images("digits", make_generator(1))
    b = load_images("digits", make_generator(1))
    c = load_images("digits", make_generator(2))
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.test, c.test)
    assert a.train.shape[0] + a.test.shape[0] == 1797
    assert a.test.shape[0] == round(0.2 * 1797)
    assert float(a.train.min()) >= 0.0 and float(a.train.max()) <= 1.0


def test_binarize_is_bernoulli_of_the_grey_level() -> None:
    """Binary values, and the mean over many draws matches the pixel (5 standard errors)."""
    p = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    draws = binarize(p.expand(20_000, 5), make_generator(0))
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    stderr = (p * (1 - p) / 20_000).sqrt()
    assert ((draws.mean(0) - p).abs() <= 5 * stderr + 1e-12).all()


def test_wrong_magic_number_names_the_expected_one(tmp_path: Path) -> None:
    """Labels where the images belong: the magic number 0x801 is not the images' 0x803."""
    write_mnist(tmp_path / "m", gz=True)
    m = tmp_path / "m"
    (m / "train-images-idx3-ubyte.gz").write_bytes((m / "train-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(GradestError, match="magic number 0x00000801, expected 0x00000803"):
        load_images(f"mnist:{m}", make_generator(0))


def test_train_and_test_images_of_different_sizes(tmp_path: Path) -> None:
    write_mnist(tmp_path / "m")
    (tmp_path / "m" / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((4, 3, 5))))
    with pytest.raises(GradestError, match="train images are 5×3 but test images 3×5"):
        load_images(f"mnist:{tmp_path / 'm'}", make_generator(0))


def test_empty_split_is_a_clear_error(tmp_path: Path) -> None:
    write_mnist(tmp_path / "m", n_test=0)
    with pytest.raises(GradestError, match="N ≥ 1 labels"):
        load_images(f"mnist:{tmp_path / 'm'}", make_generator(0))


def test_absolute_spec_only_touches_mnist_dirs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_spec("mnist:data") == f"mnist:{tmp_path / 'data'}"
    assert absolute_spec("digits") == "digits"


def test_torchvision_layout_is_pointed_to(tmp_path: Path) -> None:
    write_mnist(tmp_path / "data" / "MNIST" / "raw", gz=True)
    with pytest.raises(GradestError, match=r"use --dataset mnist:.*MNIST/raw"):
        load_images(f"mnist:{tmp_path / 'data'}", make_generator(0))
    assert load_images(f"mnist:{tmp_path / 'data' / 'MNIST' / 'raw'}", make_generator(0)).shape == (5, 3)
