"""Benchmark results: each figure next to its same-run baseline, merged into bench/results.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS = Path(os.environ.get("MAILFOLD_BENCH_RESULTS", Path(__file__).parent / "results.json"))


def record(name: str, value: float, unit: str, baseline: float) -> None:
    """Merge one figure, `{"value", "unit", "baseline", "ratio"}`, into results.json."""
    data: dict[str, object] = {}
    if RESULTS.exists():
        try:
            data = json.loads(RESULTS.read_text())
        except ValueError:
            data = {}
    ratio = value / baseline if baseline else 0.0
    data[name] = {"value": value, "unit": unit, "baseline": baseline, "ratio": round(ratio, 4)}
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(
        f"{name}: {value:.4g} {unit} vs baseline {baseline:.4g} {unit} -> ratio {ratio:.3f}",
        flush=True,
    )
