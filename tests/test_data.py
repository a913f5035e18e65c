"""Datasets, specs, transforms and loaders (itcp_deploy.data), with tiny on-disk fixtures."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from itcp_deploy.data import load_dataset, make_loader, parse_data_spec, seeded_subset
from itcp_deploy.data.folders import CorruptImageError
from itcp_deploy.errors import InputFileError, UnknownNameError, UsageError
from tests.conftest import run_cli


def write_batch(path: Path, n: int, seed: int, label_key: str = "labels", classes: int = 10) -> dict:
    rng = np.random.default_rng(seed)
    batch = {
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: rng.integers(0, classes, n).tolist(),
        "batch_label": "fake",
        "filenames": ["x"] * n,
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return batch


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    root = tmp_path / "cifar10"
    root.mkdir()
    for i in range(1, 6):
        write_batch(root / f"data_batch_{i}", 6, seed=i)
    write_batch(root / "test_batch", 4, seed=0)
    return root


def save_images(folder: Path, count: int, size: int = 12) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(count):
        pixels = np.full((size, size, 3), 40 * i, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")


def test_synthetic_is_seeded_and_sized() -> None:
    a = load_dataset("synthetic:classes=4,size=16,train=40,test=8,seed=3", "train")
    b = load_dataset("synthetic:classes=4,size=16,train=40,test=8,seed=3", "train")
    c = load_dataset("synthetic:classes=4,size=16,train=40,test=8,seed=4", "train")
    assert (a.num_classes, a.input_size, len(a)) == (4, (3, 16, 16), 40)
    assert torch.equal(a.dataset.images, b.dataset.images) and torch.equal(a.dataset.labels, b.dataset.labels)
    assert not torch.equal(a.dataset.images, c.dataset.images)
    assert len(load_dataset("synthetic:classes=4,size=16,train=40,test=8", "test")) == 8


def test_synthetic_rejects_bad_options() -> None:
    with pytest.raises(UsageError, match="unknown synthetic"):
        load_dataset("synthetic:colour=3")
    with pytest.raises(UsageError, match="malformed"):
        load_dataset("synthetic:classes")


def test_digits_split_is_deterministic_and_disjoint() -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test), train.num_classes, train.input_size) == (1438, 359, 10, (3, 32, 32))
    again = load_dataset("digits", "test")
    assert torch.equal(test.dataset.images, again.dataset.images)
    assert set(test.dataset.labels.tolist()) == set(range(10))
    assert train.mean == test.mean  # normalised with training statistics for both splits


def test_cifar10_directory_reads_every_batch_in_channel_order(cifar10_dir: Path) -> None:
    train = load_dataset(f"cifar10:{cifar10_dir}", "train", augment=False, normalize=((0, 0, 0), (1, 1, 1)))
    test = load_dataset(str(cifar10_dir), "test")  # bare path: layout detected
    assert (len(train), len(test), train.num_classes, train.split, test.split) == (30, 4, 10, "train", "test")
    raw = pickle.loads((cifar10_dir / "data_batch_1").read_bytes())
    image, label = train.dataset[0]
    assert label == raw["labels"][0]
    assert image[1, 0, 5].item() == pytest.approx(raw["data"][0][1024 + 5] / 255)  # G plane, row 0, col 5


def test_single_batch_file_is_a_whole_split(tmp_path: Path) -> None:
    write_batch(tmp_path / "batch", 7, seed=1)
    info = load_dataset(str(tmp_path / "batch"), "test")
    assert (len(info), info.num_classes, info.split) == (7, 10, None)


def test_cifar100_layout(tmp_path: Path) -> None:
    write_batch(tmp_path / "train", 5, seed=1, label_key="fine_labels", classes=100)
    write_batch(tmp_path / "test", 3, seed=2, label_key="fine_labels", classes=100)
    info = load_dataset(f"cifar100:{tmp_path}", "test")
    assert (len(info), info.num_classes) == (3, 100)
    assert parse_data_spec(str(tmp_path)).kind == "cifar100"


def test_cifar_wrong_layout_names_what_is_missing(cifar10_dir: Path) -> None:
    (cifar10_dir / "data_batch_3").unlink()
    with pytest.raises(InputFileError, match="missing data_batch_3"):
        load_dataset(f"cifar10:{cifar10_dir}", "train")


def test_untrusted_pickle_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "batch").write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}))
    with pytest.raises(InputFileError, match="not a readable CIFAR batch"):
        load_dataset(f"cifar10:{tmp_path / 'batch'}", "test")


def test_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="does not exist"):
        parse_data_spec(str(tmp_path / "nowhere"))
    with pytest.raises(UnknownNameError, match="did you mean 'cifar10'"):
        parse_data_spec("cifar11:/data")
    with pytest.raises(InputFileError, match="cannot tell"):
        parse_data_spec(str(tmp_path))  # empty directory
    with pytest.raises(UsageError, match="unknown split"):
        load_dataset("digits", "holdout")


def test_image_folder_with_splits(tmp_path: Path) -> None:
    for split in ("train", "val"):
        save_images(tmp_path / split / "cat", 3)
        save_images(tmp_path / split / "dog", 2)
    info = load_dataset(f"imagefolder:{tmp_path}", "test")
    assert (len(info), info.num_classes, info.input_size, info.split) == (5, 2, (3, 12, 12), "test")
    image, label = info.dataset[4]
    assert image.shape == (3, 12, 12) and label == 1
    assert parse_data_spec(str(tmp_path / "train")).kind == "imagefolder"


def test_image_folder_empty_class_is_one_line_error(tmp_path: Path) -> None:
    save_images(tmp_path / "cat", 2)
    (tmp_path / "dog").mkdir()
    with pytest.raises(InputFileError, match="dog holds no images"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    save_images(tmp_path / "cat", 2)
    save_images(tmp_path / "dog", 2)  # two classes: a one-class folder is refused before any loading
    (tmp_path / "cat" / "9.png").write_bytes(b"not a png")
    info = load_dataset(f"imagefolder:{tmp_path}", augment=False)
    for workers in (0, 1):  # a worker process re-raises it from its text: still one line
        with pytest.raises(CorruptImageError, match="9.png is corrupt") as caught:
            list(make_loader(info, 2, shuffle=False, num_workers=workers))
        assert "\n" not in str(caught.value) and str(caught.value).endswith("delete or replace the file")


def test_corrupt_image_error_rebuilt_by_a_worker_stays_one_line() -> None:
    text = "Caught CorruptImageError in DataLoader worker.\nTraceback...\nCorruptImageError: image x.png bad"
    assert "\n" not in str(CorruptImageError(text)) and "x.png bad" in str(CorruptImageError(text))


def test_augmentation_is_seeded_and_off_for_eval() -> None:
    info = load_dataset("synthetic:size=16,train=8,test=8", "train", augment=True)
    assert load_dataset("digits", "train").dataset.transform.augmentation.flip is False
    assert load_dataset("synthetic:train=8,test=8", "train").dataset.transform.augmentation is None
    plain = load_dataset("synthetic:size=16,train=8,test=8", "train", augment=False)
    torch.manual_seed(0)
    first = info.dataset[0][0]
    torch.manual_seed(0)
    assert torch.equal(first, info.dataset[0][0])
    assert torch.equal(plain.dataset[0][0], plain.dataset[0][0])
    assert any(not torch.equal(info.dataset[0][0], plain.dataset[0][0]) for _ in range(10))


def test_loader_order_and_subsets_follow_the_seed() -> None:
    info = load_dataset("synthetic:train=50,test=10,size=8")

    def order(seed: int) -> list[int]:
        return torch.cat([y for _, y in make_loader(info, 7, shuffle=True, seed=seed)]).tolist()

    assert order(1) == order(1) and order(1) != order(2)
    sub = seeded_subset(info, 12, seed=5)
    assert len(sub) == 12 and sub.dataset.indices == seeded_subset(info, 12, seed=5).dataset.indices
    assert sum(len(y) for _, y in make_loader(info, 5, shuffle=False, max_samples=13)) == 13


@pytest.mark.parametrize("case", ["layout", "missing", "empty_class", "corrupt"])
def test_cli_bad_data_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    target = tmp_path / "data"
    if case == "layout":
        target.mkdir()
        write_batch(target / "data_batch_1", 2, seed=0)
        spec = f"cifar10:{target}"
    elif case == "missing":
        spec = str(target)
    else:
        save_images(target / "a", 2)
        save_images(target / "b", 2)
        if case == "empty_class":
            (target / "c").mkdir()
        else:
            (target / "b" / "zz.png").write_bytes(b"\x89PNG broken")
        spec = f"imagefolder:{target}"
    code, out, err = run_cli("evaluate", "cifar_resnet20", "--data", spec, "--batch-size", "8")
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    expected = {
        "layout": "missing test_batch",
        "missing": "does not exist",
        "empty_class": "holds no images",
        "corrupt": "zz.png is corrupt",
    }[case]
    assert expected in err
