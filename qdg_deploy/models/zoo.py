"""Backbones by name from torchvision (`tv:NAME`) and timm (`timm:NAME`), their ImageNet weights through each
library's own cache (`pretrained`), and the input pipeline their pretrained configuration asks for.

torchvision: the model is built with the data set's class count (every classification builder takes
`num_classes`), and its first 3-channel convolution is replaced for another channel count. Its DEFAULT weights
are read with torch.hub's cache ($TORCH_HOME/hub/checkpoints/<file of the weights' URL>), tensors whose shape
differs (the new classifier, the new stem) skipped. timm: `timm.create_model(num_classes=, in_chans=)` adapts
both itself; its weights file is looked up in the Hugging Face hub cache (HF_HUB_CACHE, HF_HOME, HF_HUB_OFFLINE
read at call time) and handed to timm's own loader, which drops or adapts the head and stem.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import socket
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import QdgError
from .state import load_state_file

TV, TIMM = "tv:", "timm:"
NET_TIMEOUT_S = 15  # a download attempt that hears nothing for this long fails (never hangs on a dead network)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# googlenet / inception_v3: no auxiliary heads (their tuple output in training mode is not a classifier's), and no
# transform_input (it assumes 3 channels; a rebuilt run must compute what the trained one did whatever the weights)
TV_EXTRA = {
    "googlenet": dict(aux_logits=False, transform_input=False, init_weights=True),
    "inception_v3": dict(aux_logits=False, transform_input=False, init_weights=True),
}


@lru_cache(maxsize=1)
def tv_names() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


@lru_cache(maxsize=1)
def timm_names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def closest(name: str, choices, prefix: str = "") -> str:
    """'; closest: a, b, c' (difflib), or '' where nothing is close."""
    near = difflib.get_close_matches(name, list(choices), n=5, cutoff=0.0)
    return f"; closest: {', '.join(prefix + n for n in near)}" if near else ""


def check_name(arch: str) -> None:
    """QdgError for a tv:/timm: name the library does not have, listing the closest ones."""
    if arch.startswith(TV):
        name = arch[len(TV) :]
        if name not in tv_names():
            raise QdgError(
                f"unknown torchvision model {arch!r}{closest(name, tv_names(), TV)} "
                f"(`qdg-deploy models --filter tv:` lists them)"
            )
    elif arch.startswith(TIMM):
        import timm

        name = arch[len(TIMM) :]
        if not name or not timm.is_model(name):
            raise QdgError(
                f"unknown timm model {arch!r}{closest(name.split('.')[0], timm_names(), TIMM)} "
                f"(`qdg-deploy models --filter timm:` lists them)"
            )


def build_zoo(arch: str, in_channels: int, num_classes: int, pretrained: bool = False) -> nn.Module:
    check_name(arch)
    if arch.startswith(TV):
        name = arch[len(TV) :]
        import torchvision

        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **TV_EXTRA.get(name, {}))
        if in_channels != 3:
            adapt_stem(net, in_channels)
        if pretrained:
            load_tv_pretrained(net, name)
        return net
    return build_timm(arch[len(TIMM) :], in_channels, num_classes, pretrained)


def adapt_stem(net: nn.Module, in_channels: int) -> None:
    """The first convolution that reads 3 channels (the stem: modules are registered in forward order) rebuilt
    for `in_channels`, every other setting kept."""
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == 3:
            new = nn.Conv2d(
                in_channels,
                m.out_channels,
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,
                groups=1,
                bias=m.bias is not None,
                padding_mode=m.padding_mode,
            )
            parent, _, leaf = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, leaf, new)
            return
    raise QdgError(f"{type(net).__name__}: no convolution reads 3 channels, so its stem cannot take {in_channels}")


@contextmanager
def net_timeout(seconds: float = NET_TIMEOUT_S):
    """A socket timeout for the block (urllib, which torch.hub downloads with, sets none of its own)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def tv_weights(name: str):
    """torchvision's DEFAULT weights enum member for a model (None where it has none)."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def tv_cache_path(weights) -> Path:
    """Where torch.hub keeps (and first looks for) a weights file: $TORCH_HOME/hub/checkpoints/<URL's file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def no_weights(what: str, where: str, why: str) -> QdgError:
    return QdgError(
        f"--pretrained: {what} not found in {where} and not downloadable here ({why}); put the file "
        f"there on a machine with network access, or pass --weights FILE (a local state dict)"
    )


def load_tv_pretrained(net: nn.Module, name: str) -> None:
    weights = tv_weights(name)
    if weights is None:
        raise QdgError(f"--pretrained: torchvision has no pretrained weights for tv:{name}; pass --weights FILE")
    path = tv_cache_path(weights)
    cached = path.is_file()
    try:
        # torch.hub reads the cached file when there, else downloads it to that path (its "Downloading: ..." line
        # held back: a failure is one error line)
        with net_timeout(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            state = weights.get_state_dict(progress=False, weights_only=True)
    except Exception as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        if cached:
            raise QdgError(f"--pretrained: cannot read torchvision's cached weights {path}: {why}") from None
        raise no_weights(
            f"torchvision's {weights} for tv:{name} ({path.name})",
            f"torch's hub cache {path.parent}",
            f"{weights.url}: {why}",
        ) from None
    if name.startswith("densenet"):
        state = densenet_keys(state)
    load_matching(net, state, f"torchvision's {weights} ({path})")


def densenet_keys(state: dict) -> dict:
    """torchvision's DenseNet files name `norm1` as `norm.1` (and so on): the builder renames them on load."""
    import re

    pattern = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
    )
    out = {}
    for k, v in state.items():
        m = pattern.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def load_matching(net: nn.Module, state: dict, source: str) -> int:
    """Load every tensor of `state` whose name and shape match the model's; the model's tensors that the file
    holds with another shape (classifier, stem) keep their initialization. A QdgError where the file lacks some
    of the model's tensors altogether (another architecture). Returns how many were loaded."""
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in state]
    if missing:
        raise QdgError(
            f"{source} lacks {len(missing)} of the model's tensors (e.g. {', '.join(missing[:3])}): "
            f"not this architecture's weights"
        )
    net.load_state_dict(usable, strict=False)
    return len(usable)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it, from the environment as it is now (the library
    reads it once, at import)."""
    env = os.environ
    hub = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not hub:
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
        hub = os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(hub)))


def hf_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as the environment says now, as huggingface_hub reads it."""
    flag = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper()
    return flag in ("1", "ON", "YES", "TRUE")


def timm_weights_file(cfg: dict) -> Path:
    """The local file of a timm model's pretrained weights (hub id and file from its pretrained_cfg): from the
    Hugging Face cache, else downloaded into it unless offline; no_weights otherwise."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        raise QdgError(
            f"--pretrained: timm's {cfg.get('architecture')} has no weights on the Hugging Face hub; "
            f"pass --weights FILE"
        )
    repo, _, revision = hub_id.partition("@")
    names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
    cache = hf_cache_dir()
    for n in names:
        found = try_to_load_from_cache(repo, n, cache_dir=str(cache), revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    where = f"the Hugging Face cache {cache / ('models--' + repo.replace('/', '--'))}"
    if hf_offline():
        raise no_weights(f"timm's weights {repo} ({' or '.join(names)})", where, "HF_HUB_OFFLINE is set")
    # one connection attempt first: huggingface_hub retries a failed request for ~20 s per file, with a warning each
    if (unreachable := hub_unreachable()) is not None:
        raise no_weights(f"timm's weights {repo} ({' or '.join(names)})", where, unreachable)
    import logging

    hub_log = logging.getLogger("huggingface_hub")
    level, hub_log.level = hub_log.level, logging.ERROR
    errors = []
    try:
        for n in names:
            try:
                return Path(
                    hf_hub_download(
                        repo, n, revision=revision or None, cache_dir=str(cache), etag_timeout=NET_TIMEOUT_S
                    )
                )
            except Exception as e:
                errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
    finally:
        hub_log.level = level
    raise no_weights(f"timm's weights {repo} ({' or '.join(names)})", where, errors[0])


def hub_unreachable() -> str | None:
    """Why the Hugging Face endpoint (HF_ENDPOINT) cannot be reached by one TCP connection, or None."""
    from huggingface_hub import constants

    url = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=NET_TIMEOUT_S).close()
    except OSError as e:
        return f"cannot reach {url.hostname}:{port}: {e.strerror or e}"
    return None


def build_timm(name: str, in_channels: int, num_classes: int, pretrained: bool) -> nn.Module:
    import timm

    kw = dict(num_classes=num_classes, in_chans=in_channels)
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kw)
    from timm.models import get_pretrained_cfg

    # never unpickles: safetensors, or torch.load(weights_only=True)
    cfg = get_pretrained_cfg(name).to_dict()
    state = load_state_file(timm_weights_file(cfg))
    # timm's own loader, handed the file's tensors: it drops a classifier of another class count and adapts the
    # stem to in_chans as it does for any download
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(state_dict=state), **kw)
    except RuntimeError as e:
        raise QdgError(
            f"--pretrained: timm could not load its weights into timm:{name}: {str(e).splitlines()[0]}"
        ) from None


def input_config(arch: str, image_size: int | None = None) -> dict | None:
    """The eval pipeline a tv:/timm: backbone's pretrained weights expect: image size, resize (shorter side),
    centre crop, interpolation, mean/std; `image_size` overrides the size (the resize keeps the crop fraction).
    None for other names (their data sets keep their own pipeline)."""
    if arch.startswith(TV):
        weights = tv_weights(arch[len(TV) :])
        if weights is None:
            cfg = dict(size=224, resize=256, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD)
        else:
            t = weights.transforms()
            cfg = dict(
                size=int(t.crop_size[0]),
                resize=int(t.resize_size[0]),
                interpolation=t.interpolation.value,
                mean=tuple(t.mean),
                std=tuple(t.std),
            )
        source = f"torchvision {weights or 'defaults'}"
    elif arch.startswith(TIMM):
        import timm

        check_name(arch)
        pc = timm.models.get_pretrained_cfg(arch[len(TIMM) :]).to_dict()
        dc = timm.data.resolve_data_config(pretrained_cfg=pc)
        size = int(dc["input_size"][-1])
        cfg = dict(
            size=size,
            resize=int(size / dc["crop_pct"]),
            interpolation=dc["interpolation"],
            mean=tuple(dc["mean"]),
            std=tuple(dc["std"]),
        )
        source = f"timm pretrained_cfg {pc.get('architecture')}.{pc.get('tag')}"
    else:
        return None
    if image_size is not None and image_size != cfg["size"]:
        cfg["resize"] = round(image_size * cfg["resize"] / cfg["size"])
        cfg["size"] = image_size
        source += f", --image-size {image_size}"
    return {**cfg, "mean": [float(m) for m in cfg["mean"]], "std": [float(s) for s in cfg["std"]], "source": source}
