"""``load_dataset``: one entry point from a ``--data`` spec to a normalised, optionally augmented dataset."""

from __future__ import annotations

from itcp_deploy.data.info import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo
from itcp_deploy.data.memory import TensorImageDataset
from itcp_deploy.data.specs import DataSpec, parse_data_spec
from itcp_deploy.data.transforms import Augmentation, TensorTransform
from itcp_deploy.errors import InputFileError, UsageError

SPLITS = ("train", "test", "val")
Normalization = tuple[tuple[float, ...], tuple[float, ...]]


def load_dataset(
    spec: str | DataSpec,
    split: str = "train",
    *,
    augment: bool | None = None,
    normalize: Normalization | None = None,
    download: bool = False,
    labelled: bool = True,
) -> DatasetInfo:
    """Load one split of a dataset named by a ``--data`` spec.

    Args:
        spec: ``digits``, ``synthetic[:k=v,...]``, ``detection[:k=v,...]``, ``cifar10:DIR``, ``cifar100:DIR``,
            ``imagefolder:DIR``, a single CIFAR batch file, or a bare path whose layout is detected.
        split: ``train``, ``test`` or ``val`` (``val`` means ``test`` for CIFAR, digits, synthetic, detection).
        augment: random crop (+ flip, except for digits and synthetic). Defaults to on for the train split
            of every kind but ``synthetic``. Never for ``detection`` (its boxes would have to move too).
        normalize: ``(mean, std)`` per channel on the 0..1 scale. Defaults to the dataset's own: the ImageNet
            statistics for CIFAR and ImageFolder (the published CIFAR weights were trained with them),
            measured training-set statistics for digits, 0.5/0.25 for synthetic.
        download: fetch CIFAR with torchvision into the spec's directory. Never done otherwise.
        labelled: the caller trains or evaluates, so the split needs samples of at least two classes (an
            accuracy over no samples, or over one class, means nothing). ``False`` (calibration) only needs
            samples.

    Raises:
        InputFileError: a missing path, a wrong directory layout, corrupt files.
        UsageError: an unknown split.
    """
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}", f"use one of: {', '.join(SPLITS)}")
    parsed = spec if isinstance(spec, DataSpec) else parse_data_spec(spec, download=download)
    if augment is None:  # synthetic prototypes are spatial patterns: shifting them blurs the classes
        augment = split == "train" and parsed.kind != "synthetic"
    eval_split = "train" if split == "train" else "test"
    if parsed.kind == "detection":
        return _detection(parsed, eval_split)
    if parsed.kind == "imagefolder":
        info = _image_folder(parsed, split, augment, normalize)
        _check_samples(info.name, len(info), len(info.dataset.classes), labelled)
        return info
    images, labels, num_classes, stats, flip = _in_memory(parsed, eval_split, download)
    _check_samples(f"{parsed}[{eval_split}]", len(labels), len(labels.unique()), labelled)
    mean, std = normalize if normalize is not None else stats
    _check_channels(mean, std, images.shape[1])
    augmentation = Augmentation(pad_px=4, flip=flip) if augment else None
    dataset = TensorImageDataset(images, labels, TensorTransform(mean, std, augmentation))
    has_splits = parsed.path is None or parsed.path.is_dir()
    name = f"{parsed}[{eval_split}]" if has_splits else str(parsed)
    return DatasetInfo(dataset, num_classes, tuple(images.shape[1:]), tuple(mean), tuple(std), name,
                       eval_split if has_splits else None)


def _in_memory(parsed: DataSpec, split: str, download: bool) -> tuple:
    """``(uint8 images, labels, num_classes, (mean, std), flip)`` of an in-memory dataset."""
    if parsed.kind == "digits":
        from itcp_deploy.data.digits import channel_stats, load_digits_split

        images, labels = load_digits_split(split)
        return images, labels, 10, channel_stats(load_digits_split("train")[0]), False
    if parsed.kind == "synthetic":
        from itcp_deploy.data.synthetic import SyntheticOptions, make_synthetic

        options = SyntheticOptions.from_dict(parsed.options)
        images, labels = make_synthetic(options, split)
        stats = ((0.5,) * options.channels, (0.25,) * options.channels)
        return images, labels, options.classes, stats, False
    from itcp_deploy.data.cifar import download_cifar, load_cifar

    assert parsed.path is not None
    path = download_cifar(parsed.kind, parsed.path) if download else parsed.path
    images, labels, num_classes = load_cifar(parsed.kind, path, split)
    return images, labels, num_classes, (IMAGENET_MEAN, IMAGENET_STD), True


def _detection(parsed: DataSpec, split: str) -> DatasetInfo:
    """The synthetic detection set's split, in [0, 1]: torchvision detectors normalise their images themselves."""
    from itcp_deploy.data.detection import NUM_CLASSES, DetectionOptions, DetectionSet

    options = DetectionOptions.from_dict(parsed.options)
    return DatasetInfo(DetectionSet(options, split), NUM_CLASSES, (3, options.size, options.size), (0.0,) * 3,
                       (1.0,) * 3, f"{parsed}[{split}]", split, task="detection")


def _image_folder(
    parsed: DataSpec, split: str, augment: bool, normalize: Normalization | None
) -> DatasetInfo:
    from itcp_deploy.data.folders import load_image_folder, probe_size_px, resolve_split_dir
    from itcp_deploy.data.transforms import pil_transform

    assert parsed.path is not None
    root = resolve_split_dir(parsed.path, split)
    mean, std = normalize if normalize is not None else (IMAGENET_MEAN, IMAGENET_STD)
    _check_channels(mean, std, 3)
    probe = load_image_folder(root, transform=None)
    size_px = probe_size_px(probe.samples[0][0])
    probe.transform = pil_transform(size_px, tuple(mean), tuple(std), augment=augment)
    size = (3, size_px, size_px)
    return DatasetInfo(probe, len(probe.classes), size, tuple(mean), tuple(std), f"imagefolder:{root}",
                       split if root != parsed.path else None)


def _check_samples(name: str, samples: int, classes: int, labelled: bool) -> None:
    if samples == 0:
        raise InputFileError(f"data {name} has no samples", "point --data at a dataset that holds images")
    if labelled and classes < 2:
        raise InputFileError(f"data {name} has {samples} samples of only {classes} class; training and "
                             "evaluating need at least 2 classes", "point --data at the whole dataset")


def _check_channels(mean: tuple[float, ...], std: tuple[float, ...], channels: int) -> None:
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise UsageError(f"normalisation mean {tuple(mean)} / std {tuple(std)} does not fit "
                         f"{channels} channels",
                         f"give {channels} means and {channels} positive stds")
