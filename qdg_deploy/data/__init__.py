"""One registry of domain-generalization data sets.

    ds = get_dataset("rotated-mnist")            # embedded, no download
    ds = get_dataset("PACS", "/data/domainbed")  # reads /data/domainbed/PACS/<domain>/<class>/<img>
    splits = split_domains(ds)                   # per domain: train / in_eval / out_eval

Every item is (x: FloatTensor[C, H, W], y: int).
"""

from __future__ import annotations

from qdg_deploy.data.base import DGDataset, DomainSplit, split_domains
from qdg_deploy.data.folders import DOMAINBED_FOLDERS, build_digits, build_domainbed, build_folder, build_office31
from qdg_deploy.data.rotated_mnist import build_rotated_mnist
from qdg_deploy.data.splits import Splits
from qdg_deploy.errors import DataError

__all__ = [
    "DGDataset",
    "DomainSplit",
    "Splits",
    "available_datasets",
    "get_dataset",
    "run_data",
    "run_splits",
    "split_domains",
]

FOLDER_PREFIX = "folder:"


def available_datasets() -> list[str]:
    """Names accepted by get_dataset (for --help); 'folder:PATH' stands for any folder tree."""
    return ["rotated-mnist", *DOMAINBED_FOLDERS, "office31", "digits", FOLDER_PREFIX + "PATH"]


def get_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    image_size: int | None = None,
    class_map: dict | None = None,
    input_cfg: dict | None = None,
) -> DGDataset:
    """Build a data set by name (case-insensitive).

    rotated-mnist ignores data_dir; image_size, when given and not 28, resizes its
    digits. Folder data sets default to 224 x 224 (digits: 32 x 32); class_map ({domain: {folder: class}})
    renames their class folders onto one label space. input_cfg (folder data sets): a backbone's pretrained
    input pipeline (models.zoo.input_config: size, resize, crop, interpolation, mean/std) instead of their own.
    """
    if class_map and (name.lower() == "rotated-mnist"):
        raise DataError("--class-map applies to folder data sets, not rotated-mnist")
    if name.startswith(FOLDER_PREFIX):
        path = name[len(FOLDER_PREFIX) :]
        if not path:
            raise DataError("folder: needs a path, e.g. folder:/data/my_dataset")
        return build_folder(path, image_size, class_map=class_map, input_cfg=input_cfg)
    key = name.lower()
    if key == "rotated-mnist":
        return build_rotated_mnist(image_size)
    if key == "office31":
        return build_office31(data_dir, image_size, class_map, input_cfg)
    if key == "digits":
        return build_digits(data_dir, image_size, class_map, input_cfg)
    for canonical in DOMAINBED_FOLDERS:
        if key == canonical.lower():
            return build_domainbed(canonical, data_dir, image_size, class_map, input_cfg)
    raise DataError(f"unknown data set {name!r}; available: {', '.join(available_datasets())}")


def load_class_map(path: str) -> dict:
    """The --class-map FILE.json: {domain: {folder name: class name}}; DataError naming the file otherwise."""
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise DataError(f'--class-map {p} not found (a JSON file: {{"domain": {{"folder": "class"}}}})')
    try:
        data = json.loads(p.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError(f"--class-map {p} is not valid JSON ({e})") from None
    return data  # its shape is checked against the data set's domains when the data set is read


def run_splits(hp: dict) -> tuple[DGDataset, list[DomainSplit]]:
    """The data set and per-domain splits that a run's hyperparameters describe (train, eval, export, bench)."""
    ds = get_dataset(
        hp["dataset"],
        hp.get("data_dir"),
        image_size=hp.get("image_size"),
        class_map=hp.get("class_map"),
        input_cfg=hp.get("input"),
    )
    return ds, split_domains(ds, hp["holdout_fraction"], hp["seed"])


def run_data(hp: dict, test: int | None = None) -> Splits:
    """The Splits a run's hyperparameters describe; the held-out domain is `test` (an index, e.g. a run's
    config["test_env_index"]) or else hp["test_env"]."""
    ds, domains = run_splits(hp)
    return Splits(ds, domains, ds.domain_index(hp["test_env"]) if test is None else test)
