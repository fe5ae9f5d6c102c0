"""One `bench` measurement (artifact × runtime × batch), typed: written by bench/core.py through `to_json` and
checked when a result is read back (`problem`, for --compare), here only."""

from __future__ import annotations

from dataclasses import dataclass

from ..timing import LatencyStats

RECORD_VERSION = 1
LATENCY_KEYS = ("mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "min_ms", "max_ms", "std_ms")


@dataclass
class BenchRecord:
    artifact: str
    artifact_path: str
    artifact_kind: str
    run_dir: str | None
    runtime: str
    batch: int
    input_shape: list[int]
    copies: str
    threads: int | None
    runtime_info: dict
    versions: dict
    stats: LatencyStats
    size: dict
    accuracy: dict | None = None
    accuracy_skipped: str | None = None
    schema_version: int = RECORD_VERSION

    def to_json(self) -> dict:
        d = self.stats.to_dict()
        return {
            "schema_version": self.schema_version,
            "artifact": self.artifact,
            "artifact_path": self.artifact_path,
            "artifact_kind": self.artifact_kind,
            "run_dir": self.run_dir,
            "runtime": self.runtime,
            "batch": self.batch,
            "input_shape": self.input_shape,
            "copies": self.copies,
            "threads": self.threads,
            "runtime_info": self.runtime_info,
            "versions": self.versions,
            "latency_ms": {k[:-3]: d[k] for k in LATENCY_KEYS},
            "iterations": d["iterations"],
            "warmup_iterations": d["warmup_iterations"],
            "wall_s": d["wall_s"],
            "throughput_ips": d["throughput_ips"],
            "throughput_wall_ips": d["throughput_wall_ips"],
            "size": self.size,
            "accuracy": self.accuracy,
            "accuracy_skipped": self.accuracy_skipped,
        }

    @staticmethod
    def problem(r) -> str | None:
        """What makes a record read from a result file unusable by `compare` (None: nothing). Records written
        before schema_version (version 0) read the same."""

        def num(x):
            return isinstance(x, (int, float)) and not isinstance(x, bool)

        if not isinstance(r, dict):
            return "not an object"
        if not isinstance(r.get("schema_version", 0), int) or r.get("schema_version", 0) > RECORD_VERSION:
            return f"schema_version {r.get('schema_version')!r} is newer than this qdg-deploy reads ({RECORD_VERSION})"
        for key, ok in (
            ("artifact", lambda v: isinstance(v, str)),
            ("runtime", lambda v: isinstance(v, str)),
            ("batch", lambda v: isinstance(v, int)),
            ("throughput_ips", num),
            ("latency_ms", lambda v: isinstance(v, dict) and num(v.get("mean")) and num(v.get("p99"))),
            ("size", lambda v: isinstance(v, dict) and num(v.get("file_bytes"))),
            ("accuracy", lambda v: v is None or (isinstance(v, dict) and num(v.get("test_acc")))),
        ):
            if key == "accuracy" and key not in r:
                continue
            if key not in r or not ok(r[key]):
                return f"{key!r} missing or of the wrong type"
        return None
