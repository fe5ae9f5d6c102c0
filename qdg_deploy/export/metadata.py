"""What every exported ONNX says about itself, in the model's metadata_props (string keys, string values; lists
and objects as JSON), so that a deployment (or `qdg-deploy bench` / `eval` of a bare .onnx) needs no run
directory to feed it correctly and name its outputs:

    toolkit, toolkit_version    qdg-deploy and its version
    input_size                  [C, H, W] the network takes
    channel_order, mean, std    RGB / gray; the normalization (x / 255 - mean) / std the data went through
    input                       the whole eval pipeline (resize, crop, interpolation, ...) as JSON
    classes, domains, dataset   output index -> class name; the data set's domains; its name
    test_env                    the held-out domain
    method, scheme, bits, act_bits, target, format, arch
    data                        how the run's splits are rebuilt (dataset, data_dir, seed, holdout_fraction,
                                image_size, class_map, input, test_env_index): `eval` / `bench` of a bare .onnx

The keys and values never change the graph: nodes and initializers are what they are without them."""

from __future__ import annotations

import json

import onnx

from ..version import __version__

JSON_KEYS = ("input_size", "mean", "std", "input", "classes", "domains", "data")
DATA_KEYS = ("dataset", "data_dir", "seed", "holdout_fraction", "image_size", "class_map", "input")


def base_metadata(input_shape, target: str, fmt: str) -> dict[str, str]:
    return {
        "toolkit": "qdg-deploy",
        "toolkit_version": __version__,
        "input_size": json.dumps(list(input_shape)),
        "target": target,
        "format": fmt,
    }


def default_pipeline(dataset: str, size: int) -> dict:
    """The eval pipeline of a run written before config.json recorded it (the data sets' own pipelines)."""
    if dataset == "rotated-mnist":
        return {"size": size, "mean": [0.0], "std": [1.0], "channel_order": "gray"}
    if dataset == "digits":
        return {"size": size, "resize": [size, size], "mean": [0.5] * 3, "std": [0.5] * 3, "channel_order": "RGB"}
    return {
        "size": size,
        "resize": [size, size],
        "interpolation": "bilinear",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "channel_order": "RGB",
    }


def run_metadata(config: dict, report: dict) -> dict[str, str]:
    """A run's metadata: its data set, classes, domains and input pipeline (config.json) and the export's
    method / scheme / bits (the report)."""
    shape = config["model"]["input_shape"]
    pipeline = config.get("input") or default_pipeline(config.get("dataset", ""), shape[-1])
    domains = config.get("domains") or []
    test = config.get("test_env_index")
    meta = {
        "classes": json.dumps(config.get("classes") or []),
        "domains": json.dumps(domains),
        "dataset": str(config.get("dataset")),
        "channel_order": pipeline.get("channel_order", "RGB"),
        "mean": json.dumps(pipeline.get("mean")),
        "std": json.dumps(pipeline.get("std")),
        "input": json.dumps(pipeline),
        "arch": str(config["model"].get("arch")),
        "method": str(config.get("hparams", {}).get("method")),
        "scheme": str(report.get("scheme")),
        "bits": str(report.get("bits")),
        "act_bits": str(report.get("act_bits")),
    }
    if isinstance(test, int) and 0 <= test < len(domains):
        meta["test_env"] = domains[test]
    hp = config.get("hparams", {})
    meta["data"] = json.dumps({**{k: hp.get(k) for k in DATA_KEYS}, "test_env_index": test}, sort_keys=True)
    return meta


def config_from_metadata(meta: dict) -> dict | None:
    """The parts of a run's config.json that evaluating an exported model needs (hparams to rebuild the splits,
    the held-out domain, classes, domains, input shape), from its metadata; None where it lacks them."""
    data = meta.get("data")
    if not isinstance(data, dict) or not isinstance(meta.get("input_size"), list) or "dataset" not in data:
        return None
    hp = {k: data.get(k) for k in DATA_KEYS}
    scheme = meta.get("scheme")
    return {
        "hparams": {**hp, "method": meta.get("method")},
        "dataset": data["dataset"],
        "test_env_index": data.get("test_env_index"),
        "classes": meta.get("classes"),
        "domains": meta.get("domains"),
        "from_metadata": True,
        "model": {
            "arch": meta.get("arch"),
            "input_shape": meta["input_size"],
            "scheme": None if scheme in (None, "None") else scheme,
        },
    }


def set_metadata(proto: onnx.ModelProto, meta: dict[str, str]) -> onnx.ModelProto:
    """`proto` with its metadata_props replaced by `meta` (in key order: the bytes are the same on every run)."""
    del proto.metadata_props[:]
    for k in sorted(meta):
        proto.metadata_props.add(key=k, value=str(meta[k]))
    return proto


def read_metadata(path_or_proto) -> dict:
    """An ONNX file's (or proto's) metadata_props as a dict, the JSON-valued keys decoded; {} where it has none."""
    proto = (
        path_or_proto
        if isinstance(path_or_proto, onnx.ModelProto)
        else onnx.load(str(path_or_proto), load_external_data=False)
    )
    out = {}
    for p in proto.metadata_props:
        value = p.value
        if p.key in JSON_KEYS:
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[p.key] = value
    return out


def without_metadata(data: bytes) -> bytes:
    """An ONNX file's bytes as written without metadata_props (tests/test_golden_exports.py: the graph's bytes)."""
    proto = onnx.ModelProto.FromString(data)
    del proto.metadata_props[:]
    return proto.SerializeToString()
