"""The JSON records a run directory holds (`config.json`, `metrics.json`), typed, each written and read here.

Every record carries a `schema_version`. Files written before it existed (version 0, e.g. tests/data/golden*)
read as the same record: version 1 only added the key. The fields every producer writes are typed; what one
kind of run adds (a training run's history, a calibration's report, an ensemble's members, ...) stays in `extra`
and is written after them, in its order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import QdgError
from .io import read_json, write_json
from .version import __version__

SCHEMA_VERSION = 1


def read_record_json(path: Path) -> dict:
    """A run's JSON file as a dict, or a QdgError naming it (unreadable, not JSON, not an object)."""
    try:
        data = read_json(path)
    except (UnicodeDecodeError, ValueError) as e:
        raise QdgError(f"{path} is not valid JSON ({e}); the run is damaged: train it again") from None
    if not isinstance(data, dict):
        raise QdgError(f"{path} holds a JSON {type(data).__name__}, not an object; the run is damaged: train it again")
    return data


def _check_version(data: dict, what: str) -> int:
    version = data.get("schema_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
        raise QdgError(
            f"{what} has schema_version {version!r}; this qdg-deploy {__version__} reads up to "
            f"{SCHEMA_VERSION}: update qdg-deploy"
        )
    return version


@dataclass
class RunConfig:
    """config.json: what the run is (hyperparameters from the hparams table, data set, held-out domain, the
    network's record for runs.build_run_model) plus its producer's extras."""

    hparams: dict
    dataset: str
    domains: list[str]
    test_env_index: int
    classes: list[str]
    model: dict
    extra: dict = field(default_factory=dict)
    qdg_deploy_version: str = __version__
    schema_version: int = SCHEMA_VERSION

    TYPED = ("hparams", "dataset", "domains", "test_env_index", "classes", "model")

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "qdg_deploy_version": self.qdg_deploy_version,
            **{k: getattr(self, k) for k in self.TYPED},
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: dict, what: str = "config.json") -> RunConfig:
        """Any version up to SCHEMA_VERSION; a typed field an old or damaged file lacks reads as None (the
        callers that need it say what is missing)."""
        _check_version(data, what)
        extra = {k: v for k, v in data.items() if k not in (*cls.TYPED, "schema_version", "qdg_deploy_version")}
        return cls(
            **{k: data.get(k) for k in cls.TYPED},
            extra=extra,
            qdg_deploy_version=data.get("qdg_deploy_version"),
            schema_version=SCHEMA_VERSION,
        )

    @classmethod
    def of_any(cls, config: RunConfig | dict) -> RunConfig:
        return config if isinstance(config, RunConfig) else cls.from_json(config)

    @classmethod
    def read(cls, path: Path) -> RunConfig:
        return cls.from_json(read_record_json(path), str(path))

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())


@dataclass
class Metrics:
    """metrics.json: the selected model's accuracy (accuracy.domain_metrics' figures) and what it is."""

    per_domain: dict | None = None
    test_env: str | None = None
    test_acc: float | None = None
    val_acc: float | None = None
    method: str | None = None
    bits: int | None = None
    scheme: str | None = None
    extra: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    SCORED = ("per_domain", "test_env", "test_acc", "val_acc")
    WHAT = ("bits", "scheme", "method")

    @classmethod
    def of(cls, scored: dict, *, method: str | None, bits: int | None, scheme: str | None, **extra) -> Metrics:
        """From domain_metrics' dict (its other keys, e.g. selected_step, and `extra` go to extra)."""
        rest = {k: v for k, v in scored.items() if k not in cls.SCORED}
        return cls(
            **{k: scored[k] for k in cls.SCORED}, method=method, bits=bits, scheme=scheme, extra={**rest, **extra}
        )

    def to_json(self) -> dict:
        """The scored figures a run has (a fixture's run may have none), its extras, then what it is."""
        scored = {k: getattr(self, k) for k in self.SCORED if getattr(self, k) is not None}
        return {
            "schema_version": self.schema_version,
            **scored,
            **self.extra,
            **{k: getattr(self, k) for k in self.WHAT},
        }

    @classmethod
    def from_json(cls, data: dict, what: str = "metrics.json") -> Metrics:
        _check_version(data, what)
        extra = {k: v for k, v in data.items() if k not in (*cls.SCORED, *cls.WHAT, "schema_version")}
        return cls(**{k: data.get(k) for k in (*cls.SCORED, *cls.WHAT)}, extra=extra)

    @classmethod
    def of_any(cls, metrics: Metrics | dict) -> Metrics:
        return metrics if isinstance(metrics, Metrics) else cls.from_json(metrics)

    @classmethod
    def read(cls, path: Path) -> Metrics:
        return cls.from_json(read_record_json(path), str(path))

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())
