"""Timing helpers and the bench-results.json format shared by every benchmark."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path("bench-results.json")


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    floor: float | None
    goal: str

    @property
    def ratio(self) -> float | None:
        return None if not self.floor else self.value / self.floor


def per_call_ns(fn: Callable[[], object], *, calls: int, batch: int = 1) -> list[float]:
    """Wall time of each call (or of each batch, divided by its size), in ns."""
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter_ns() - t0) / batch)
    return samples


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def report(figures: list[Figure]) -> None:
    print(f"{'benchmark':<48} {'value':>12} {'floor':>12} {'ratio':>7}  goal")
    for f in figures:
        floor = f"{f.floor:.1f}" if f.floor is not None else "-"
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else "-"
        print(f"{f.name:<48} {f.value:>10.1f}{f.unit:>2} {floor:>12} {ratio:>7}  {f.goal}")
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for f in figures:
        existing[f.name] = {"value": round(f.value, 3), "unit": f.unit,
                            "floor": None if f.floor is None else round(f.floor, 3),
                            "ratio": None if f.ratio is None else round(f.ratio, 3)}
    RESULTS.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
