"""Image-folder data sets laid out as ROOT/<domain>/<class>/<image> (DomainBed's layout).

The file list is built and validated once, up front, so that a bad tree fails
with one clear DataError before training starts; images are opened lazily.
"""

from __future__ import annotations

import os

from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from qdg_deploy.data.base import DGDataset
from qdg_deploy.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Registry name -> folder name DomainBed's download script creates.
DOMAINBED_FOLDERS = {
    "PACS": "PACS",
    "VLCS": "VLCS",
    "OfficeHome": "office_home",
    "TerraIncognita": "terra_incognita",
    "DomainNet": "domain_net",
}
OFFICE31_DOMAINS = ("amazon", "dslr", "webcam")
DIGITS_DOMAINS = ("mnist", "mnistm", "svhn", "syn")


def _visible_dirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _scan_class(path: str) -> list[str]:
    """All image files under one class folder (recursively), sorted; hidden entries skipped."""
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue
            full = os.path.join(dirpath, fname)
            if not fname.lower().endswith(IMAGE_EXTENSIONS):
                raise DataError(f"{full} is not an image (expected one of {' '.join(IMAGE_EXTENSIONS)})")
            files.append(full)
    if not files:
        raise DataError(f"class folder {path} is empty (no images)")
    return files


def _scan_domains(root: str, domain_dirs: dict[str, str], class_map: dict | None = None):
    """Return (classes, {domain: [(path, label), ...]}, notes) for domain name -> class-root path.

    The label space is the union of the domains' classes (class folders, renamed per domain by `class_map`:
    {domain: {folder: class}}); a domain may lack some classes (a note says which), but a class found in one
    domain only cannot be learnt and tested apart: an error naming it."""
    if len(domain_dirs) < 2:
        found = ", ".join(domain_dirs) or "none"
        raise DataError(f"{root}: found {len(domain_dirs)} domain folder(s) ({found}); need at least 2")
    class_map = check_class_map(class_map or {}, domain_dirs)
    folders = {}  # domain -> {class name: [folders]}
    for domain, path in domain_dirs.items():
        names = _visible_dirs(path)
        if not names:
            raise DataError(f"domain folder {path} has no class folders")
        unknown = sorted(set(class_map.get(domain, {})) - set(names))
        if unknown:
            raise DataError(f"--class-map names folder(s) {unknown} that domain {domain!r} ({path}) does not have")
        folders[domain] = {}
        for n in names:
            folders[domain].setdefault(class_map.get(domain, {}).get(n, n), []).append(n)
    classes = sorted(set().union(*(set(f) for f in folders.values())))
    alone = {c: [d for d in folders if c in folders[d]] for c in classes}
    alone = {c: ds[0] for c, ds in alone.items() if len(ds) == 1}
    if alone:
        listed = ", ".join(f"{c!r} (only in {d!r})" for c, d in alone.items())
        raise DataError(
            f"classes found in one domain only in {root}: {listed}; if other domains name them "
            f"differently, map the folders onto one label space with --class-map FILE.json "
            f'({{"domain": {{"folder": "class"}}}}), else remove those folders'
        )
    index = {c: i for i, c in enumerate(classes)}
    samples = {
        d: [
            (f, index[c])
            for c in sorted(folders[d])
            for n in folders[d][c]
            for f in _scan_class(os.path.join(domain_dirs[d], n))
        ]
        for d in folders
    }
    lacking = [
        f"{d!r} lacks {', '.join(sorted(set(classes) - set(folders[d])))}"
        for d in folders
        if set(classes) - set(folders[d])
    ]
    notes = (
        [
            f"not every domain has every class ({'; '.join(lacking)}): each trains on what it has, and its "
            f"accuracy counts only its own classes"
        ]
        if lacking
        else []
    )
    return classes, samples, notes


def check_class_map(class_map, domain_dirs: dict[str, str]) -> dict:
    """A --class-map as {domain: {folder: class}}, every domain known; DataError naming what is wrong."""
    shape = 'an object {"domain": {"folder name": "class name"}}'
    if not isinstance(class_map, dict) or not all(isinstance(m, dict) for m in class_map.values()):
        raise DataError(f"--class-map must be {shape}")
    unknown = sorted(set(class_map) - set(domain_dirs))
    if unknown:
        raise DataError(f"--class-map names domain(s) {unknown} not in the data set ({', '.join(domain_dirs)})")
    for d, m in class_map.items():
        bad = [k for k, v in m.items() if not isinstance(v, str) or not v]
        if bad:
            raise DataError(f"--class-map: domain {d!r}: folder(s) {bad} must map to a class name (a string)")
    return class_map


class ImageList(Dataset):
    """(path, label) pairs; each item is (transform(RGB image), label)."""

    def __init__(self, samples: list[tuple[str, int]], transform):
        self.samples = samples
        self.targets = [y for _, y in samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image {path}: {e}") from None
        return self.transform(img), label


class FolderDGDataset(DGDataset):
    def __init__(
        self,
        name: str,
        root: str,
        domain_dirs: dict[str, str],
        size: int,
        train_tf,
        eval_tf,
        augments: bool = True,
        class_map: dict | None = None,
        pipeline: dict | None = None,
    ):
        classes, samples, self.notes = _scan_domains(root, domain_dirs, class_map)
        super().__init__(name, list(samples), classes, (3, size, size))
        self.pipeline = pipeline or plain_pipeline(size, IMAGENET_MEAN, IMAGENET_STD)
        self.root = root
        self.samples = [samples[d] for d in self.domains]
        self.train_tf, self.eval_tf, self.augments = train_tf, eval_tf, augments

    def _domain_dataset(self, i: int, train: bool) -> Dataset:
        return ImageList(self.samples[i], self.train_tf if train else self.eval_tf)


def plain_pipeline(size: int, mean, std) -> dict:
    """What the eval transform of the data sets' own pipeline does (config.json's "input", ONNX metadata)."""
    return {
        "size": size,
        "resize": [size, size],
        "crop": None,
        "interpolation": "bilinear",
        "mean": list(mean),
        "std": list(std),
        "channel_order": "RGB",
        "scale": "pixel / 255, then (x - mean) / std",
    }


def backbone_pipeline(cfg: dict) -> dict:
    """A backbone's pretrained input configuration (models.zoo.input_config) as a pipeline record."""
    return {
        "size": cfg["size"],
        "resize": cfg["resize"],
        "crop": cfg["size"],
        "interpolation": cfg["interpolation"],
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "channel_order": "RGB",
        "scale": "pixel / 255, then (x - mean) / std",
        "source": cfg.get("source"),
    }


def backbone_transforms(cfg: dict):
    """DomainBed's augmentation at the backbone's size, interpolation and mean/std (train); the backbone's own
    eval pipeline: shorter side resized to `resize`, centre crop `size` (eval)."""
    mode = T.InterpolationMode(cfg["interpolation"])
    normalize = T.Normalize(cfg["mean"], cfg["std"])
    return domainbed_transforms(cfg["size"], normalize, mode)[0], T.Compose(
        [T.Resize(cfg["resize"], interpolation=mode), T.CenterCrop(cfg["size"]), T.ToTensor(), normalize]
    )


def domainbed_transforms(size: int, normalize=None, mode=None):
    """DomainBed's ImageNet-style augmentation (train) and plain resize (eval); a backbone's normalization and
    interpolation where given."""
    normalize = normalize or T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    mode = mode or T.InterpolationMode.BILINEAR
    train = T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.7, 1.0), interpolation=mode),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.3, 0.3, 0.3, 0.3),
            T.RandomGrayscale(),
            T.ToTensor(),
            normalize,
        ]
    )
    return train, T.Compose([T.Resize((size, size)), T.ToTensor(), normalize])


def _check_size(image_size: int | None, default: int) -> int:
    size = default if image_size is None else image_size
    if not isinstance(size, int) or size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    return size


def _require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise DataError(f"{path} not found ({what})")
    return path


def _need_data_dir(name: str, data_dir: str | None, folder: str) -> str:
    if not data_dir:
        raise DataError(f"{name} needs a data directory: the folder that holds {folder}/")
    return _require_dir(os.path.abspath(os.path.expanduser(data_dir)), "data directory")


def _transforms(size: int, backbone: dict | None) -> dict:
    """FolderDGDataset's train_tf, eval_tf and pipeline: a backbone's (input_cfg) or DomainBed's."""
    if backbone:
        train, ev = backbone_transforms(backbone)
        return dict(size=backbone["size"], train_tf=train, eval_tf=ev, pipeline=backbone_pipeline(backbone))
    train, ev = domainbed_transforms(size)
    return dict(size=size, train_tf=train, eval_tf=ev)


def build_folder(
    path: str,
    image_size: int | None = None,
    name: str | None = None,
    class_map: dict | None = None,
    input_cfg: dict | None = None,
) -> FolderDGDataset:
    """Any PATH/<domain>/<class>/<image> tree; every visible sub-folder is a domain. `input_cfg`: a backbone's
    pretrained input pipeline (models.zoo.input_config) instead of DomainBed's."""
    root = _require_dir(os.path.abspath(os.path.expanduser(path)), "data set folder")
    size = _check_size(image_size, 224)
    dirs = {d: os.path.join(root, d) for d in _visible_dirs(root)}
    return FolderDGDataset(name or f"folder:{path}", root, dirs, class_map=class_map, **_transforms(size, input_cfg))


def build_domainbed(
    name: str,
    data_dir: str | None,
    image_size: int | None = None,
    class_map: dict | None = None,
    input_cfg: dict | None = None,
) -> FolderDGDataset:
    folder = DOMAINBED_FOLDERS[name]
    base = _need_data_dir(name, data_dir, folder)
    root = os.path.join(base, folder)
    _require_dir(root, f"expected the {name} folder {folder!r} inside {base}")
    return build_folder(root, image_size, name=name, class_map=class_map, input_cfg=input_cfg)


def _known_domains_root(name: str, data_dir: str | None, folder: str, known: tuple[str, ...]) -> str:
    """ROOT/<folder> if present; ROOT itself if it already holds some known domains."""
    base = _need_data_dir(name, data_dir, folder)
    root = os.path.join(base, folder)
    if os.path.isdir(root):
        return root
    if any(os.path.isdir(os.path.join(base, d)) for d in known):
        return base
    raise DataError(f"{root} not found (expected the {name} folder with domains {', '.join(known)} inside {base})")


def build_office31(
    data_dir: str | None, image_size: int | None = None, class_map: dict | None = None, input_cfg: dict | None = None
) -> FolderDGDataset:
    root = _known_domains_root("office31", data_dir, "office31", OFFICE31_DOMAINS)
    size = _check_size(image_size, 224)
    dirs = {}
    for d in OFFICE31_DOMAINS:
        path = os.path.join(root, d)
        if not os.path.isdir(path):
            continue
        # The original archive nests classes one level deeper: <domain>/images/<class>.
        if _visible_dirs(path) == ["images"]:
            path = os.path.join(path, "images")
        dirs[d] = path
    return FolderDGDataset("office31", root, dirs, class_map=class_map, **_transforms(size, input_cfg))


def build_digits(
    data_dir: str | None, image_size: int | None = None, class_map: dict | None = None, input_cfg: dict | None = None
) -> FolderDGDataset:
    root = _known_domains_root("digits", data_dir, "digits", DIGITS_DOMAINS)
    size = _check_size(image_size, 32)
    dirs = {d: os.path.join(root, d) for d in DIGITS_DOMAINS if os.path.isdir(os.path.join(root, d))}
    # Small digit images: no augmentation, so train and eval share one transform (a backbone's eval pipeline).
    if input_cfg:
        size, tf = input_cfg["size"], backbone_transforms(input_cfg)[1]
        pipeline = backbone_pipeline(input_cfg)
    else:
        tf = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
        pipeline = plain_pipeline(size, (0.5,) * 3, (0.5,) * 3)
    ds = FolderDGDataset("digits", root, dirs, size, tf, tf, augments=False, class_map=class_map, pipeline=pipeline)
    if ds.classes != [str(c) for c in range(10)]:
        raise DataError(f"digits classes in {root} must be the folders 0-9, found {ds.classes}")
    return ds
