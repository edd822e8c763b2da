"""Shared helpers for pyro-nf benchmarks: robust timing, tables, JSON results, simple fits.

The timing model is *interleaved repeats*: every contender (a zero-argument callable doing one
"step") is warmed up, its number of steps per repeat is calibrated so that one repeat takes
about ``target_s`` seconds, and then ``repeats`` rounds are run in which every contender does
one repeat. The order alternates between rounds (``A B C``, ``C B A``, ``A B C`` …), so slow
drift of a shared, noisy machine hits all contenders about equally. Each repeat gives one
per-step time; report the **median** over repeats and the spread (min–max, IQR).

Typical use::

    from _common import interleaved_timings, summarize, format_table, save_json

    res = interleaved_timings({"ours": step_a, "theirs": step_b}, repeats=7, target_s=0.3)
    ours, theirs = summarize(res.per_step["ours"]), summarize(res.per_step["theirs"])
    print(format_table(["who", "ms/step"], [["ours", f"{1e3 * ours['median']:.2f}"]]))
    save_json("benchmarks/results/x.json", {"results": ...}, device="cpu")

API (all times are in seconds unless a name says otherwise):

* :func:`set_threads` — pin torch's intra-op thread count (benchmarks use 1).
* :func:`synchronize` — wait for queued CUDA work (no-op on CPU); call before reading a timer.
* :func:`time_steps` — seconds per call of ``fn`` over ``steps`` back-to-back calls.
* :func:`calibrate_steps` — warm ``fn`` up and pick a step count giving ~``target_s`` per repeat.
* :func:`interleaved_timings` — the interleaved-repeat protocol above → :class:`Timings`.
* :func:`summarize` — median, quartiles, IQR, min, max of a list of samples.
* :func:`paired_ratios` — per-repeat ratios ``a[r] / b[r]`` of two interleaved contenders.
* :func:`format_table` — a plain-text table (right-aligned numbers, left-aligned text).
* :func:`machine_info` — torch/pyro/python versions, threads, device, CPU/GPU model, date.
* :func:`save_json` — write a payload plus ``machine`` info to a JSON file (dirs created).
* :func:`load_results`, :func:`merged_rows` — read several results files back and merge their
  rows (a later row replaces an earlier one with the same key): the ``--merge`` of a benchmark.
* :func:`linear_fit`, :func:`loglog_slope` — least-squares slope helpers for scaling summaries.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Timings",
    "calibrate_steps",
    "format_table",
    "interleaved_timings",
    "linear_fit",
    "loglog_slope",
    "machine_info",
    "paired_ratios",
    "save_json",
    "set_threads",
    "summarize",
    "synchronize",
    "time_steps",
]

Step = Callable[[], object]


def set_threads(n: int | None = 1) -> None:
    """Set torch's intra-op thread count (``None`` leaves it unchanged)."""
    if n is not None:
        torch.set_num_threads(int(n))


def synchronize(device: str | torch.device = "cpu") -> None:
    """Block until all queued work on ``device`` is done (CUDA only; a no-op on CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_steps(fn: Step, steps: int, device: str | torch.device = "cpu") -> float:
    """Run ``fn()`` ``steps`` times back to back; return the mean wall time per call (s).

    The device is synchronized before starting and before stopping the clock.
    """
    if steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps}")
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - t0) / steps


def calibrate_steps(
    fn: Step,
    target_s: float,
    device: str | torch.device = "cpu",
    warmup_steps: int = 3,
    min_steps: int = 3,
    max_steps: int = 10_000,
) -> int:
    """Warm ``fn`` up, then return a step count making one repeat last about ``target_s``.

    ``warmup_steps`` untimed calls come first (allocator, autograd and lazy-init warm-up); the
    per-step cost is then estimated from a short timed probe (itself extra warm-up) of growing
    length until it spans at least ``target_s / 4`` or ``max_steps`` is reached.
    """
    for _ in range(max(0, warmup_steps)):
        fn()
    synchronize(device)
    n = 1
    while True:
        per_step = time_steps(fn, n, device)
        if per_step * n >= target_s / 4 or n >= max_steps:
            break
        n = min(max_steps, n * 4)
    steps = int(round(target_s / max(per_step, 1e-9)))
    return max(min_steps, min(max_steps, steps))


@dataclass
class Timings:
    """Result of :func:`interleaved_timings`.

    Attributes:
        per_step: name → list of per-step times (s), one per repeat, in repeat order.
        steps: name → number of steps in each repeat of that contender.
        order: the contender order used in each round (for the record).
    """

    per_step: dict[str, list[float]]
    steps: dict[str, int]
    order: list[list[str]] = field(default_factory=list)


def interleaved_timings(
    fns: Mapping[str, Step],
    repeats: int = 7,
    target_s: float = 0.3,
    device: str | torch.device = "cpu",
    warmup_steps: int = 3,
    steps: int | Mapping[str, int] | None = None,
    min_steps: int = 3,
    max_steps: int = 10_000,
    collect_garbage: bool = True,
) -> Timings:
    """Time several contenders with interleaved repeats (see the module docstring).

    Args:
        fns: name → zero-argument callable doing one step.
        repeats: rounds; each contender does one repeat per round.
        target_s: approximate duration of one repeat, used to calibrate the step counts.
        device: synchronized around every timed repeat.
        warmup_steps: untimed calls per contender before calibration.
        steps: fixed steps per repeat (an int for all, or per name) instead of calibrating.
        min_steps, max_steps: bounds on calibrated step counts.
        collect_garbage: run ``gc.collect()`` before each timed repeat (outside the clock), so
            that garbage left by one contender is not collected on another's clock.

    Returns:
        A :class:`Timings` with one per-step time per repeat for every contender.
    """
    if repeats < 1:
        raise ValueError(f"repeats: expected a positive int, got {repeats}")
    names = list(fns)
    n_steps: dict[str, int] = {}
    for name in names:
        if steps is None:
            n_steps[name] = calibrate_steps(
                fns[name], target_s, device, warmup_steps, min_steps, max_steps
            )
        else:
            n_steps[name] = int(steps if isinstance(steps, int) else steps[name])
            for _ in range(max(0, warmup_steps)):
                fns[name]()
    per_step: dict[str, list[float]] = {name: [] for name in names}
    orders: list[list[str]] = []
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        orders.append(list(order))
        for name in order:
            if collect_garbage:
                gc.collect()
            per_step[name].append(time_steps(fns[name], n_steps[name], device))
    return Timings(per_step=per_step, steps=n_steps, order=orders)


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, IQR, min, max and count of ``samples``.

    Example:
        >>> s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
        >>> s["median"], s["min"], s["max"]
        (3.0, 1.0, 100.0)
    """
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("samples: expected at least one value, got none")
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {
        "median": statistics.median(xs),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "min": xs[0],
        "max": xs[-1],
        "n": float(len(xs)),
    }


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-repeat ratios ``a[r] / b[r]`` of two contenders timed in the same rounds.

    With interleaved repeats, pairing by round cancels much of the machine's drift; the spread
    of these ratios is a fairer error bar on a speed ratio than the two spreads combined.
    """
    if len(a) != len(b):
        raise ValueError(f"a, b: expected equal lengths, got {len(a)} and {len(b)}")
    return [x / y for x, y in zip(a, b, strict=True)]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table; cells are ``str()``-ed, numbers right-aligned, text left-aligned.

    Example:
        >>> print(format_table(["a", "b"], [["x", 1.5], ["yy", 10]]))
        a  |   b
        ---+----
        x  | 1.5
        yy |  10
    """
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def numeric(col: int) -> bool:
        return all(_looks_numeric(row[col]) for row in cells) if cells else False

    right = [numeric(i) for i in range(len(headers))]

    def fmt(row: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        return " | ".join(parts).rstrip()

    lines = [fmt(list(headers)), "-+-".join("-" * w for w in widths)]
    lines += [fmt(row) for row in cells]
    return "\n".join(lines)


def _looks_numeric(s: str) -> bool:
    head = s.split(" ")[0].rstrip("x×%")
    try:
        float(head)
    except ValueError:
        return False
    return True


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Versions, thread counts, device, CPU (and GPU) model and the current date/time."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "device": str(device),
    }
    try:
        import pyro

        info["pyro"] = pyro.__version__
    except ImportError:  # pragma: no cover
        info["pyro"] = None
    try:
        import pyro_nf

        info["pyro_nf"] = pyro_nf.__version__
    except ImportError:  # pragma: no cover
        info["pyro_nf"] = None
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def save_json(
    path: str | os.PathLike[str], payload: Mapping[str, Any], device: str | torch.device = "cpu"
) -> Path:
    """Write ``payload`` plus ``"machine": machine_info(device)`` to ``path`` as JSON.

    Parent directories are created; non-finite floats are written as ``null``. Returns the path.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine_info(device), **payload}
    out.write_text(json.dumps(_finite(data), indent=2) + "\n", encoding="utf-8")
    return out


def load_results(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """The payloads of several results files (as :func:`save_json` wrote them), in order."""
    return [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]


def merged_rows(
    payloads: Sequence[Mapping[str, Any]], section: str, key: Sequence[str]
) -> list[dict[str, Any]]:
    """The rows of list ``section`` of every payload; a later row replaces an earlier one with
    the same values of the fields ``key`` (e.g. a rerun of one model and seed).

    Example:
        >>> a = {"runs": [{"m": "x", "seed": 0, "v": 1}, {"m": "y", "seed": 0, "v": 2}]}
        >>> b = {"runs": [{"m": "x", "seed": 0, "v": 3}]}
        >>> [r["v"] for r in merged_rows([a, b], "runs", ("m", "seed"))]
        [3, 2]
    """
    rows: dict[tuple, dict[str, Any]] = {}
    for payload in payloads:
        for r in payload.get(section, []):
            rows[tuple(r[k] for k in key)] = r
    return list(rows.values())


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``y ≈ slope·x + intercept``.

    Example:
        >>> linear_fit([1, 2, 3], [3, 5, 7])
        (2.0, 1.0)
    """
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"xs, ys: expected equal lengths >= 2, got {len(xs)} and {len(ys)}")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("xs: expected at least two distinct values")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, my - slope * mx


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Exponent ``p`` of a power-law fit ``y ∝ x^p`` (least squares on logs).

    Example:
        >>> round(loglog_slope([1, 10, 100], [2, 20, 200]), 6)
        1.0
    """
    return linear_fit([math.log(x) for x in xs], [math.log(y) for y in ys])[0]
