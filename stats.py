"""Statistics over seeds for the report: means with t intervals, paired differences, the Pareto front.

Torch-free (report.py imports it). The intervals are Student's t intervals of the mean over the seeds;
a difference between two experiments pairs their runs seed by seed (the suite gives every experiment
the same seeds), which removes what the seed does to both.
"""

import math
from dataclasses import dataclass

from scipy import stats as scipy_stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean over n seeds and the half-width of its confidence interval (None with fewer than 2 seeds)."""

    mean: float
    half_width: float | None
    n: int

    @property
    def covers_zero(self) -> bool | None:
        """Whether the interval holds 0: a difference that is not significant. None without an interval."""
        if self.half_width is None:
            return None
        return abs(self.mean) <= self.half_width

    def format(self, digits: int = 2, unit: str = "") -> str:
        unit = f" {unit}" if unit else ""
        if self.half_width is None:
            return f"{self.mean:.{digits}f}{unit}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}{unit}"


def mean_interval(values: list[float], confidence: float = CONFIDENCE) -> Estimate:
    """The mean of values and its two-sided t interval: mean ± t(1 - (1 - confidence) / 2, n - 1) · s / √n."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n < 2:
        return Estimate(mean, None, n)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    t = scipy_stats.t.ppf(1 - (1 - confidence) / 2, n - 1)
    return Estimate(mean, float(t * sd / math.sqrt(n)), n)


def paired_difference(
    values: dict[int, float], reference: dict[int, float], confidence: float = CONFIDENCE
) -> Estimate | None:
    """values − reference, paired by seed over the seeds both have; None when they share none."""
    seeds = sorted(values.keys() & reference.keys())
    if not seeds:
        return None
    return mean_interval([values[s] - reference[s] for s in seeds], confidence)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, quality) that no other point beats: none with cost <= and quality >=,
    one of them strictly. Ordered by cost."""
    front = [
        i
        for i, (cost, quality) in enumerate(points)
        if not any(c <= cost and q >= quality and (c, q) != (cost, quality) for c, q in points)
    ]
    return sorted(front, key=lambda i: points[i])
