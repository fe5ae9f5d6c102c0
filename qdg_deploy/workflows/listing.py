"""`qdg-deploy models`: the architectures `--arch` takes, and (on request) whether the exporter lowers each (it
composes models/ and export/, so it lives here, not in models/).

Listing is instant; the export check builds each listed network (random init) and traces it, about a second
apiece, so it runs only with `check` (narrow the list with a filter first: timm alone has ~1,400 models)."""

from __future__ import annotations

from ..models import MODELS, zoo

SOURCES = {"short": "qdg-deploy", "tv": "torchvision", "timm": "timm"}


def model_names(filter_text: str | None = None) -> list[tuple[str, str]]:
    """(arch, library) for every name `--arch` takes whose text contains `filter_text` (case-insensitive)."""
    names = [(n, SOURCES["short"]) for n in MODELS]
    names += [(zoo.TV + n, SOURCES["tv"]) for n in zoo.tv_names()]
    names += [(zoo.TIMM + n, SOURCES["timm"]) for n in zoo.timm_names()]
    if filter_text:
        key = filter_text.lower()
        names = [(n, lib) for n, lib in names if key in n.lower()]
    return names


def export_support(arch: str, in_channels: int = 3, num_classes: int = 10) -> str:
    """'yes', or 'no: <the first operation the exporter cannot lower>' (export/supported.py), for the network
    built at random init."""
    from ..export.supported import unsupported_op
    from ..models import build_model

    try:
        net = build_model(arch, in_channels, num_classes).eval()
        op = unsupported_op(net)
    except Exception as e:  # a network torch.fx cannot trace, or one that cannot be built with these shapes
        return f"no: not traceable ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})"
    return "yes" if op is None else f"no: {op}"


def list_models(filter_text: str | None = None, check: bool = False) -> list[dict]:
    """One row per architecture: arch, library, pretrained (whether the library has default weights for it;
    None for the short names) and, with `check`, exporter support; without it that key is None."""
    rows = []
    for arch, lib in model_names(filter_text):
        rows.append(
            {
                "arch": arch,
                "library": lib,
                "pretrained": has_pretrained(arch),
                "export": export_support(arch) if check else None,
            }
        )
    return rows


def has_pretrained(arch: str) -> bool | None:
    if arch.startswith(zoo.TV):
        return zoo.tv_weights(arch[len(zoo.TV) :]) is not None
    if arch.startswith(zoo.TIMM):
        from timm.models import get_pretrained_cfg

        try:
            return bool(get_pretrained_cfg(arch[len(zoo.TIMM) :]).hf_hub_id)
        except Exception:
            return False
    return None
