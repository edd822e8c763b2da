"""The ``pyro-nf`` command: ``demo``, ``fit-density``, ``sample`` and ``bench``.

Every subcommand has ``--help`` (each option with its default) and ``pyro-nf --version`` prints
the version. ``demo`` and ``fit-density`` show progress bars on stderr when it is a terminal
(``--quiet``: none). ``demo`` compares Gaussian guides and the default
:class:`~pyro_nf.FlowGuide` on the centered eight schools funnel against a NUTS reference
shipped as package data (:func:`demo_reference`). ``fit-density`` keeps the CSV header's column
names in the model file, and ``sample`` writes them as its header line (``--no-header``: none). The command never shows a traceback: every failure is ONE line on stderr,
``pyro-nf <command>: <what went wrong>``, naming the argument or flag as the user typed it, with
exit status 2 (130 when interrupted with Ctrl-C). Input is checked before any expensive work:
the CSV file (UTF-8, a header, numbers, finite values; errors give CSV line numbers with the
header as line 1), the output paths (an existing, writable directory; not a directory itself)
and the model file (readable, finite parameters). If saving still fails after a fit, the model
is saved to a fallback path in the current or temporary directory and the error line says
where.

Example:
    >>> main(["sample", "no-such-model.pt"])
    2
    >>> main(["--help"])  # doctest: +SKIP
    usage: pyro-nf [-h] [--version] {demo,fit-density,sample,bench} ...
"""

from __future__ import annotations

import argparse
import codecs
import csv
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["build_parser", "cli_families", "demo_reference", "main"]

BENCHMARKS = {
    "flow-speed": "flow_speed.py",
    "energies": "energies.py",
    "guides": "guides.py",
    "vae": "vae.py",
    "hard-posteriors": "hard_posteriors.py",
}
#: registered families fit-density does not offer by name (no depth/hidden to set, or a stack)
NOT_CLI_FAMILIES = ("gaussian", "diagonal", "stack")


def cli_families() -> list[str]:
    """The flow families ``fit-density --flow`` accepts: every registered one but
    :data:`NOT_CLI_FAMILIES` (so a newly registered family appears without a CLI change).

    Example:
        >>> {"maf", "spline_coupling"} <= set(cli_families())
        True
    """
    from .flows.registry import family_names

    return [name for name in family_names() if name not in NOT_CLI_FAMILIES]


#: exit statuses: a failure of any kind, and an interrupt (Ctrl-C, SIGINT)
EXIT_ERROR, EXIT_INTERRUPTED = 2, 130

EPILOG = (
    "exit status: 0 on success; 2 on any error (one line on stderr naming the argument, never "
    "a traceback); 130 when interrupted (Ctrl-C)."
)


class CLIError(Exception):
    """A user error: printed as ``pyro-nf <command>: <message>`` (one line), exit ``status``.

    Example:
        >>> CLIError("data: no such file: x.csv").status
        2
    """

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


# -- demo -----------------------------------------------------------------------------------------

#: the NUTS reference of the demo's eight schools posterior: package data in pyro_nf/datasets/,
#: computed once by benchmarks/reference/make_demo_reference.py (the demo never runs NUTS)
DEMO_REFERENCE = "eight_schools_nuts.json"
#: guide draws behind each error of the eight schools table
DEMO_DRAWS = 4000


def demo_reference() -> dict[str, Any]:
    """The shipped NUTS reference of eight schools (read with ``importlib.resources``): per
    parameter (``mu``, ``tau``, ``theta[0..7]``) mean, sd, quantiles and 1000 thinned draws,
    the joint density of ``(theta[0], log tau)`` and the provenance (seed, chains, R-hat).

    A missing or damaged file is a one-line :class:`CLIError`.

    Example:
        >>> ref = demo_reference()
        >>> ref["names"][:2], ref["provenance"]["max_rhat"] < 1.01
        (['mu', 'tau'], True)
    """
    from importlib import resources

    where = f"pyro_nf/datasets/{DEMO_REFERENCE}"
    try:
        folder = resources.files("pyro_nf.datasets")
        ref = json.loads(folder.joinpath(DEMO_REFERENCE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # missing (FileNotFoundError), not JSON, not UTF-8
        raise CLIError(
            f"the NUTS reference {where} is missing or unreadable ({type(err).__name__}); this "
            "installation of pyro-nf lacks its package data: reinstall it"
        ) from None
    fields = ("names", "mean", "sd", "data", "draws", "funnel_histogram", "provenance")
    missing = [f for f in fields if not isinstance(ref, dict) or f not in ref]
    if missing:
        raise CLIError(f"the NUTS reference {where} is damaged (no field {missing[0]!r})")
    return ref


def _demo_energies(out: Path, steps: int, seed: int, progress: bool | None) -> list[dict[str, Any]]:
    """Fit planar, radial and IAF flows to U1 and U2 by reverse KL; plot them, return the rows."""
    from .density.targets import get_target
    from .flows.builders import iaf, planar, radial

    rows, fitted = [], []
    for energy in ("U1", "U2"):
        target = get_target(energy)
        for family, builder in (("planar", planar), ("radial", radial), ("iaf", iaf)):
            depth = 4 if family == "iaf" else 16
            method = (energy, family, depth)
            row, flow, kl = _fit_energy(method, target, builder, steps, seed, progress)
            rows.append(row)
            fitted.append((energy, family, depth, target, flow, kl))
    _plot_energies(fitted, out / "demo_energies.png")
    return rows


def _fit_energy(
    method: tuple[str, str, int],
    target: Any,
    builder: Callable[..., Any],
    steps: int,
    seed: int,
    progress: bool | None,
) -> tuple[dict[str, Any], Any, tuple[float, float]]:
    """Fit one seeded 2D flow ``(energy, family, depth)`` to ``target`` by reverse KL: its table
    row, the fitted flow and its ``(KL, standard error)``."""
    import torch

    from .density.reverse_kl import fit_reverse_kl, kl_estimate

    energy, family, depth = method
    torch.manual_seed(seed)
    flow = builder(2, depth=depth)
    start = time.perf_counter()
    desc = f"{energy} {family} K={depth}"
    fit_reverse_kl(flow, target, steps=steps, progress=progress, desc=desc)
    elapsed = time.perf_counter() - start
    kl, se, _ = kl_estimate(flow, target, num_samples=20000)
    row = {
        "problem": f"{energy} (log Z = {target.log_normalizer:.4f})",
        "method": f"{family} K={depth}",
        "KL(q||p) nats": f"{float(kl):.4f} ± {float(se):.4f}",
        "time s": f"{elapsed:.1f}",
    }
    return row, flow, (float(kl), float(se))


def _pyplot(path: Path) -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or ``None`` (with a note) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the examples extra
        print("matplotlib is not installed (pip install 'pyro-nf[examples]'): skipping", path.name)
        return None
    return plt


def _plot_energies(fitted: list, path: Path) -> None:
    """One row of panels per energy: the target, then each fitted flow's density, each with a
    colorbar, axis labels and (for a flow) its KL in the title."""
    plt = _pyplot(path)
    if plt is None:  # pragma: no cover
        return
    from .plotting import plot_density_2d

    energies = sorted({e for e, *_ in fitted})
    cols = 1 + len([e for e, *_ in fitted if e == energies[0]])
    fig, axes = plt.subplots(
        len(energies), cols, figsize=(3.6 * cols, 3.3 * len(energies)), layout="constrained"
    )
    for i, energy in enumerate(energies):
        entries = [x for x in fitted if x[0] == energy]
        target = entries[0][3]
        title = f"target p = exp(-{energy}) / Z\nlog Z = {target.log_normalizer:.3f}"
        plot_density_2d(
            target.normalized_log_prob, ax=axes[i, 0], lim=4.0, n=120, title=title, colorbar=True
        )
        for j, (_, family, depth, _, flow, (kl, se)) in enumerate(entries, start=1):
            title = f"{family} K={depth}\nKL(q||p) = {kl:.3f} ± {se:.3f} nats"
            plot_density_2d(flow(), ax=axes[i, j], lim=4.0, n=120, title=title, colorbar=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _eight_schools(y: Any, sigma: Any) -> None:
    """The centered eight schools model (Rubin 1981), whose posterior is a funnel in
    ``(theta, log tau)``: ``mu ~ N(0, 5^2)``, ``tau ~ HalfCauchy(5)``,
    ``theta_j ~ N(mu, tau^2)``, ``y_j ~ N(theta_j, sigma_j^2)``."""
    import pyro
    import pyro.distributions as dist

    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(y.new_tensor(5.0)))
    with pyro.plate("schools", y.shape[-1]):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def _demo_bayes(
    out: Path, steps: int, seed: int, progress: bool | None, ref: dict[str, Any]
) -> list[dict[str, Any]]:
    """Fit Gaussian autoguides and the default FlowGuide to eight schools; compare each with
    the NUTS reference ``ref`` (table and figure); return the rows."""
    import torch

    y, sigma = (torch.tensor(ref["data"][k]) for k in ("y", "sigma"))
    rows, draws = [], {}
    for name, make in _eight_schools_guides().items():
        row, draws[name] = _fit_guide(name, make, (y, sigma), steps, seed, progress, ref)
        rows.append(row)
    _plot_eight_schools(draws, rows, ref, out / "demo_eight_schools.png")
    return rows


def _eight_schools_guides() -> dict[str, Callable[[], Any]]:
    """The guides the demo compares, by table name: each a factory of a fresh guide."""
    from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

    from .infer.guides import FlowGuide

    return {
        "AutoNormal (diagonal Gaussian)": lambda: AutoNormal(_eight_schools),
        "AutoMultivariateNormal (Gaussian)": lambda: AutoMultivariateNormal(_eight_schools),
        "FlowGuide (pyro-nf default)": lambda: FlowGuide(_eight_schools),
    }


def _fit_guide(
    name: str,
    make: Callable[[], Any],
    data: tuple[Any, Any],
    steps: int,
    seed: int,
    progress: bool | None,
    ref: dict[str, Any],
) -> tuple[dict[str, Any], Any]:
    """Fit one seeded guide to eight schools: its table row (ELBO, k-hat, errors against
    ``ref``) and :data:`DEMO_DRAWS` draws ``(S, 10)`` of ``mu, tau, theta``."""
    import pyro

    from .diagnostics.report import diagnose
    from .infer.svi import fit

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = make()
    start = time.perf_counter()
    fit(_eight_schools, guide, *data, steps=steps, num_particles=8, early_stopping=None,
        progress=progress, desc=name.split(" (")[0])  # fmt: skip
    elapsed = time.perf_counter() - start
    report = diagnose(_eight_schools, guide, *data, num_samples=2000)
    draws = _guide_draws(guide, data, DEMO_DRAWS)
    errors = _reference_errors(draws, ref)
    row = {
        "method": name,
        "ELBO": f"{report.elbo:.3f} ± {report.elbo_se:.3f}",
        "k-hat": f"{report.khat:.2f} ({report.verdict})",
        "mean err (sd)": f"{errors['mean_err']:.2f} ({errors['mean_err_at']})",
        "log-sd err": f"{errors['log_sd_err']:.2f} ({errors['log_sd_err_at']})",
        "sd of tau": f"{float(draws[:, 1].std()):.2f} (NUTS {ref['sd'][1]:.2f})",
        "time s": f"{elapsed:.1f}",
    }
    return {**row, **{k: errors[k] for k in ("mean_err", "log_sd_err")}}, draws


def _guide_draws(guide: Callable[..., Any], data: tuple[Any, Any], n: int) -> Any:
    """``n`` vectorized draws of the guide: ``(n, 10)``, the columns ``mu, tau, theta[0..7]``."""
    import pyro
    import torch

    with torch.no_grad(), pyro.plate("draws", n, dim=-2):
        z = guide(*data)
    parts = [z["mu"].reshape(n, 1), z["tau"].reshape(n, 1), z["theta"].reshape(n, -1)]
    return torch.cat(parts, dim=-1).double()


def _reference_errors(draws: Any, ref: dict[str, Any]) -> dict[str, Any]:
    """Errors of ``draws`` ``(S, P)`` against the reference, over its ``P`` parameters:
    ``mean_err = max_j |mean_j - mean_ref_j| / sd_ref_j`` and
    ``log_sd_err = max_j |log(sd_j / sd_ref_j)|``, with the parameter where each is largest.

    Example:
        >>> import torch
        >>> ref = {"names": ["a", "b"], "mean": [0.0, 1.0], "sd": [1.0, 4.0]}
        >>> draws = torch.tensor([[-1.0, 2.0], [1.0, 4.0]])  # means 0, 3; sds 1.41, 1.41
        >>> e = _reference_errors(draws, ref)  # b: |3 - 1| / 4 = 0.5, |log(1.41 / 4)| = 1.04
        >>> round(e["mean_err"], 3), e["mean_err_at"], round(e["log_sd_err"], 3), e["log_sd_err_at"]
        (0.5, 'b', 1.04, 'b')
    """
    import torch

    mean, sd = (torch.tensor(ref[k], dtype=draws.dtype) for k in ("mean", "sd"))
    mean_err = (draws.mean(0) - mean).abs() / sd
    log_sd_err = (draws.std(0) / sd).log().abs()
    names = ref["names"]
    return {
        "mean_err": float(mean_err.max()),
        "mean_err_at": names[int(mean_err.argmax())],
        "log_sd_err": float(log_sd_err.max()),
        "log_sd_err_at": names[int(log_sd_err.argmax())],
    }


def _plot_eight_schools(draws: dict, rows: list, ref: dict[str, Any], path: Path) -> None:
    """The posterior of tau under each guide against NUTS, then one funnel panel per guide:
    its draws of ``(theta[0], log tau)`` over the NUTS density (colorbar), errors in titles."""
    plt = _pyplot(path)
    if plt is None:  # pragma: no cover
        return
    import numpy as np

    fig, axes = plt.subplots(
        1, 1 + len(draws), figsize=(4.2 * (1 + len(draws)), 4.0), layout="constrained"
    )
    _plot_tau_marginals(axes[0], draws, ref, np)
    hist = ref["funnel_histogram"]
    extent = (*hist["x_range"], *hist["y_range"])
    for ax, (name, z), row in zip(axes[1:], draws.items(), rows, strict=True):
        image = ax.imshow(np.asarray(hist["density"]), origin="lower", extent=extent,
                          aspect="auto", cmap="Greys", interpolation="nearest")  # fmt: skip
        ax.scatter(z[:500, 2].numpy(), z[:500, 1].log().numpy(), s=3, alpha=0.5, color="C3",
                   linewidths=0, label=f"{name.split(' (')[0]} draws")  # fmt: skip
        ax.set_xlim(*hist["x_range"])
        ax.set_ylim(*hist["y_range"])
        ax.set_xlabel("theta[0] (effect of school A)")
        ax.set_ylabel("log tau")
        ax.set_title(
            f"{name}\nELBO {row['ELBO']}\nerror vs NUTS: mean {row['mean_err']:.2f} sd, "
            f"log-sd {row['log_sd_err']:.2f}",
            fontsize=9,
        )
        ax.legend(loc="lower right", fontsize=7)
    fig.colorbar(image, ax=axes[1:], label="NUTS posterior density of (theta[0], log tau)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_tau_marginals(ax: Any, draws: dict, ref: dict[str, Any], np: Any) -> None:
    """Histograms of tau: the NUTS reference (filled) and each guide (outlines)."""
    bins = np.linspace(0.0, 25.0, 51)
    ax.hist(np.asarray(ref["draws"]["tau"]), bins=bins, density=True, color="0.8",
            label=f"NUTS ({_provenance(ref)})")  # fmt: skip
    for name, z in draws.items():
        ax.hist(z[:, 1].clamp(max=25.0).numpy(), bins=bins, density=True, histtype="step",
                lw=1.5, label=name.split(" (")[0])  # fmt: skip
    ax.set_xlabel("tau (sd between schools)")
    ax.set_ylabel("posterior density")
    ax.set_title("eight schools (centered): posterior of tau", fontsize=9)
    ax.legend(fontsize=7)


def _provenance(ref: dict[str, Any]) -> str:
    """The reference's provenance in a few words: chains, draws, R-hat."""
    p = ref["provenance"]
    draws = p["num_chains"] * p["num_samples_per_chain"]
    return f"{p['num_chains']} chains, {draws} draws, R-hat {p['max_rhat']:.3f}"


def _print_table(rows: list[dict[str, Any]]) -> str:
    """Print ``rows`` as an aligned text table (columns in order of appearance; numbers that
    are not strings are left out: they are for the JSON); return it."""
    rows = [{k: v for k, v in r.items() if isinstance(v, str)} for r in rows]
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    lines = [
        " | ".join(k.ljust(widths[k]) for k in keys),
        "-+-".join("-" * widths[k] for k in keys),
    ]
    lines += [" | ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys) for r in rows]
    text = "\n".join(lines)
    print(text)
    return text


def cmd_demo(args: argparse.Namespace) -> int:
    """``pyro-nf demo``: the energies and eight schools comparisons, tables, PNGs and JSON."""
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("pyro").setLevel(logging.WARNING)  # no "Guessed max_plate_nesting" chatter
    ref = demo_reference()  # before any work: a missing file fails at once
    out = _out_dir(args.out)
    steps = 300 if args.quick else args.steps
    progress = False if args.quiet else None  # bars on stderr when it is a terminal
    start = time.perf_counter()
    print(f"pyro-nf demo: 2D energies with exact log Z (reverse KL, {steps} steps each)")
    energy_rows = _demo_energies(out, steps, args.seed, progress)
    _print_table(energy_rows)
    print(
        f"\nBayesian model: eight schools (centered: a funnel), {steps} SVI steps per guide, "
        f"8 particles;\nerrors against NUTS ({_provenance(ref)}; shipped with pyro-nf): "
        "mean err = max |mean - NUTS mean| / NUTS sd, log-sd err = max |log(sd / NUTS sd)|"
    )
    bayes_rows = _demo_bayes(out, steps, args.seed, progress, ref)
    _print_table(bayes_rows)
    results = {"energies": energy_rows, "bayes": bayes_rows, "reference": ref["provenance"]}
    (out / "demo_results.json").write_text(json.dumps(results, indent=2))
    print(
        f"\nwrote {out / 'demo_energies.png'}, {out / 'demo_eight_schools.png'}, {out / 'demo_results.json'}"
        f" in {time.perf_counter() - start:.0f} s"
    )
    return 0


# -- reading the CSV file -------------------------------------------------------------------------


def _show(cell: str) -> str:
    """A CSV cell as an error message shows it: quoted, at most 40 characters."""
    if not cell.strip():
        return "an empty cell"
    return repr(cell if len(cell) <= 40 else cell[:37] + "...")


def _read_text(path: str) -> str:
    """The text of the CSV file ``path``; a CLIError if it is missing, a folder or not UTF-8."""
    p = Path(path)
    if not p.exists():
        raise CLIError(f"data: no such file: {path}")
    if p.is_dir():
        raise CLIError(f"data: {path} is a directory, expected a CSV file")
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise CLIError(f"data: cannot read {path} ({err.strerror or err})") from None
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise CLIError(
            f"data: {path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at line {line}); "
            "save it as UTF-8"
        ) from None


def _csv_rows(text: str) -> list[tuple[int, list[str]]]:
    """The non-blank rows of CSV ``text``, each with the line number it starts on (from 1)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, start = [], 1
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                rows.append((start, cells))
            start = reader.line_num + 1
    except csv.Error as err:
        raise CLIError(f"data: line {start}: not valid CSV ({err})") from None
    return rows


def _is_number(cell: str) -> bool:
    """Whether ``float`` reads ``cell`` (as the fit reads it: ``nan`` and ``inf`` included)."""
    try:
        float(cell)
    except ValueError:
        return False
    return True


class _Table:
    """The data rows of a CSV file, its column labels, and how its errors name lines.

    A first row that is not all numbers is the header; the number of columns is the first data
    row's (a header of another width still names the columns it has, as before).
    """

    def __init__(self, rows: list[tuple[int, list[str]]]) -> None:
        first = rows[0][1] if rows else []
        self.header_line = rows[0][0] if rows and not all(map(_is_number, first)) else None
        names = [c.strip() for c in first] if self.header_line else []
        self.rows = rows[1:] if self.header_line else rows
        width = len(self.rows[0][1]) if self.rows else len(names)
        names = (names + [""] * width)[:width]
        self.labels = [f"column {n!r}" if n else f"column {j + 1}" for j, n in enumerate(names)]
        same = self.header_line and len(first) == width
        #: the header's column names, when it names every column (kept with the fitted model)
        self.names = names if same and all(names) else None
        self.like = "the header" if same else f"line {self.rows[0][0] if self.rows else 1}"
        head = f"header = line {self.header_line}" if self.header_line else "no header line"
        self.where = f"(CSV line numbers, {head})"

    def values(self) -> tuple[list[list[float]], list[tuple[int, str, str]]]:
        """The rows as floats, and ``(line, column label, cell)`` of each row's first NaN/inf."""
        width, values, bad = len(self.labels), [], []
        for line, cells in self.rows:
            if len(cells) != width:
                raise CLIError(
                    f"data: line {line} {self.where}: expected {width} columns as on {self.like}, "
                    f"got {len(cells)}"
                )
            try:
                row = [float(c) for c in cells]
            except ValueError:
                j = next(j for j, c in enumerate(cells) if not _is_number(c))
                raise CLIError(
                    f"data: line {line} {self.where}, {self.labels[j]}: {_show(cells[j])} is "
                    "not a number"
                ) from None
            values.append(row)
            j = next((j for j, v in enumerate(row) if not math.isfinite(v)), None)
            if j is not None:
                bad.append((line, self.labels[j], cells[j]))
        return values, bad


def _nonfinite_message(table: _Table, bad: list[tuple[int, str, str]]) -> str:
    """The error for rows with NaN or inf: how many, where, the first cell, the flag to use."""
    line, label, cell = bad[0]
    literal = cell.strip().lower().lstrip("+-") in ("nan", "inf", "infinity")
    why = "is NaN or inf" if literal else "overflows to inf (beyond float64)"
    lines = ", ".join(str(b[0]) for b in bad[:5]) + (", ..." if len(bad) > 5 else "")
    first = f"lines {lines}; first: " if len(bad) > 1 else ""
    return (
        f"data: {len(bad)} of {len(table.rows)} rows hold NaN or inf {table.where}: {first}"
        f"line {line}, {label}: {_show(cell)} {why}; pass --drop-nonfinite to drop such rows"
    )


def _read_csv(
    path: str, drop_nonfinite: bool = False
) -> tuple[Any, list[str], list[int], list[str] | None]:
    """The data rows of a CSV file as a float64 tensor ``(N, D)``, the column labels, the line
    numbers of the rows dropped for NaN/inf (with ``drop_nonfinite``; else they raise) and the
    header's column names (``None`` without a header naming every column).

    A first row that is not all numbers is the header. Every problem is a CLIError naming the
    CSV line (header = line 1) and column.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "d.csv")
        >>> _ = open(path, "w").write("a,b\\n1,2\\nnan,4\\n5,6\\n")
        >>> x, labels, dropped, names = _read_csv(path, drop_nonfinite=True)
        >>> x.tolist(), labels, dropped, names
        ([[1.0, 2.0], [5.0, 6.0]], ["column 'a'", "column 'b'"], [3], ['a', 'b'])
    """
    import torch

    table = _Table(_csv_rows(_read_text(path)))
    if not table.rows:
        if table.header_line is None:
            raise CLIError(f"data: {path} is empty, expected a CSV file with one sample per row")
        raise CLIError(f"data: {path} has a header line but no data rows")
    values, bad = table.values()
    if bad and not drop_nonfinite:
        raise CLIError(_nonfinite_message(table, bad))
    dropped = {line for line, _, _ in bad}
    values = [v for (line, _), v in zip(table.rows, values, strict=True) if line not in dropped]
    if not values:
        raise CLIError(f"data: every data row of {path} holds NaN or inf; nothing is left to fit")
    x = torch.tensor(values, dtype=torch.float64)
    return x, table.labels, sorted(dropped), table.names


def _check_fittable(x: Any, labels: list[str]) -> None:
    """A CLIError if the rows cannot be fitted: fewer than 2, a constant column, or a column
    whose mean or spread overflows float64 (values near 1e308)."""
    if x.shape[0] < 2:
        raise CLIError(f"data: expected at least 2 data rows, got {x.shape[0]}")
    constant = (x.max(0).values == x.min(0).values).nonzero().flatten().tolist()
    if constant:
        j = constant[0]
        raise CLIError(
            f"data: {labels[j]} is constant (every row holds {x[0, j].item():g}); a constant "
            "column has no density: drop it"
        )
    huge = (~(x.std(0, unbiased=False) + x.mean(0)).isfinite()).nonzero().flatten().tolist()
    if huge:
        j = huge[0]
        raise CLIError(
            f"data: {labels[j]} is too large to fit (largest |value| "
            f"{x[:, j].abs().max().item():.3g}; its mean or spread overflows float64): "
            "rescale the column (e.g. divide it by a power of ten)"
        )


# -- output paths ---------------------------------------------------------------------------------


def _check_out_file(path: str, flag: str = "--out") -> Path:
    """The output file ``path``, checked before any work: not a directory, and in an existing
    directory where a file can be created (tried with a probe file, removed at once)."""
    out = Path(path)
    if not path.strip():
        raise CLIError(f"{flag}: expected a file path, got an empty string")
    if out.is_dir():
        raise CLIError(f"{flag}: {path} is a directory, expected a file path such as {out / 'x'}")
    parent = out.parent
    if not parent.exists():
        raise CLIError(f"{flag}: directory {parent} does not exist")
    if not parent.is_dir():
        raise CLIError(f"{flag}: {parent} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".pyro-nf-", suffix=".probe")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise CLIError(
            f"{flag}: cannot write to directory {parent} ({err.strerror or err})"
        ) from None
    return out


def _reason(err: OSError) -> str:
    """The operating system's short reason for ``err`` (``Permission denied`` ...)."""
    return os.strerror(err.errno) if err.errno else str(err) or type(err).__name__


def _save_model(estimator: Any, path: str | os.PathLike) -> None:
    """Write ``estimator`` as :meth:`DensityEstimator.save` does (same format, atomic; the CSV
    header's column names travel as its ``feature_names``), with errors in CLI terms."""
    from .density.persistence import estimator_payload
    from .training import checkpoint

    bad = _nonfinite_parameters(estimator)
    if bad:
        raise CLIError(
            f"the fitted model holds NaN or inf parameters ({bad[0]}); nothing was saved"
        )
    checkpoint.atomic_save(estimator_payload(estimator), os.fspath(path), argname="--out")


def _save_with_fallback(estimator: Any, out: Path) -> None:
    """Save to ``out``; if that fails, save to a new file in the current or the temporary
    directory and raise a CLIError saying where the model is."""
    try:
        _save_model(estimator, out)
        return
    except OSError as err:
        reason = _reason(err)
    for folder in dict.fromkeys([Path.cwd(), Path(tempfile.gettempdir())]):
        try:
            fd, name = tempfile.mkstemp(
                dir=folder, prefix=f"{out.stem or 'model'}-", suffix=out.suffix or ".pt"
            )
            os.close(fd)
            _save_model(estimator, name)
        except OSError:
            continue
        raise CLIError(
            f"--out: could not write {out} ({reason}); the fitted model was saved to {name}"
        )
    raise CLIError(f"--out: could not write {out} ({reason}), nor a fallback copy; the fit is lost")


# -- fit-density / sample -----------------------------------------------------------------------

#: estimator argument names, as the fit-density user knows them
_CLI_NAMES = {
    "x": "data",
    "dim": "data (its number of columns)",
    "steps": "--steps",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "val_fraction": "--val-fraction",
    "depth": "--depth",
    "flow": "--flow",
    "drop_nonfinite": "--drop-nonfinite",
    "n": "-n",
    "seed": "--seed",
    "standardize": "--no-standardize",
    "path": "model",
}


def _cli_terms(message: str) -> str:
    """``message`` of a library error with argument names in CLI terms (``x`` -> ``data``,
    ``val_fraction=0.1`` -> ``--val-fraction 0.1``, ``drop_nonfinite=True`` -> the flag).

    Example:
        >>> _cli_terms("x: expected at least 3 rows (1 for validation with val_fraction=0.5)")
        'data: expected at least 3 rows (1 for validation with --val-fraction 0.5)'
    """
    message = re.sub(r"\bdrop_nonfinite=True\b", "--drop-nonfinite", message)
    message = re.sub(
        r"\b(steps|batch_size|lr|val_fraction|depth)=", lambda m: _CLI_NAMES[m[1]] + " ", message
    )
    head, sep, rest = message.partition(": ")
    return f"{_CLI_NAMES[head]}: {rest}" if sep and head in _CLI_NAMES else message


def _fit(args: argparse.Namespace, x: Any) -> tuple[Any, Any]:
    """Fit the estimator the flags ask for to ``x``: the estimator and its history, or a
    CLIError (status 130 on Ctrl-C) in CLI terms."""
    from .density.estimator import DensityEstimator
    from .training import TrainingDivergedError

    try:
        estimator = DensityEstimator(
            args.flow, standardize=not args.no_standardize, dim=x.shape[-1], depth=args.depth
        )
        estimator = estimator.double()
        history = estimator.fit(
            x,
            steps=args.steps,
            batch_size=args.batch_size,
            val_fraction=args.val_fraction,
            lr=args.lr,
            progress=False if args.quiet else None,  # a bar when stderr is a terminal
        )
    except KeyboardInterrupt:
        raise CLIError("interrupted during the fit; nothing was saved", EXIT_INTERRUPTED) from None
    except TrainingDivergedError as err:
        raise CLIError(
            f"the fit diverged ({_cli_terms(str(err))}); nothing was saved; try a smaller --lr"
        ) from None
    except ValueError as err:
        raise CLIError(_cli_terms(str(err))) from None
    return estimator, history


def cmd_fit_density(args: argparse.Namespace) -> int:
    """``pyro-nf fit-density``: fit a flow to a CSV file by maximum likelihood and save it."""
    import torch

    torch.manual_seed(args.seed)
    out = _check_out_file(args.out)
    x, labels, dropped, names = _read_csv(args.data, args.drop_nonfinite)
    _check_fittable(x, labels)
    if dropped:
        lines = ", ".join(map(str, dropped[:5])) + (", ..." if len(dropped) > 5 else "")
        print(
            f"pyro-nf fit-density: dropped {len(dropped)} row(s) with NaN or inf (CSV lines "
            f"{lines}; --drop-nonfinite)",
            file=sys.stderr,
        )
    estimator, history = _fit(args, x)
    nll = estimator.nll(x)
    if not math.isfinite(nll):
        raise CLIError(
            f"the fitted model gives a non-finite log-likelihood ({-nll}) on data; nothing was "
            "saved; try a smaller --lr, or rescale the columns"
        )
    estimator.feature_names = None if names is None else tuple(names)
    _save_with_fallback(estimator, out)
    print(
        f"fitted {args.flow} (depth {args.depth}) to {x.shape[0]} rows x {x.shape[1]} columns: "
        f"mean log-likelihood {-nll:.4f} nats/row; {history.stop_reason} after {history.num_steps} steps"
    )
    print(f"saved {out}")
    return 0


def _load_model(path: str) -> Any:
    """The density model saved at ``path``; a CLIError unless it loads with finite parameters."""
    from .density.estimator import DensityEstimator

    p = Path(path)
    if not p.exists():
        raise CLIError(f"model: no such file: {path}")
    if p.is_dir():
        raise CLIError(f"model: {path} is a directory, expected a .pt file written by fit-density")
    try:
        estimator = DensityEstimator.load(p)
    except Exception as err:  # any failure to rebuild the model means a damaged file
        detail = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
        detail = detail.removeprefix("path: ")
        raise CLIError(f"model: {path} is not a usable pyro-nf density model ({detail})") from None
    bad = _nonfinite_parameters(estimator)
    if bad:
        raise CLIError(
            f"model: {path} holds NaN or inf parameters ({', '.join(bad[:3])}); refit it"
        )
    return estimator


def _nonfinite_parameters(estimator: Any) -> list[str]:
    """The names of the estimator's floating-point tensors that hold NaN or inf."""
    import torch

    return [
        name
        for name, t in estimator.state_dict().items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def _draw(estimator: Any, n: int, model: str) -> list[list[float]]:
    """``n`` draws of ``estimator`` as lists; a CLIError if any is NaN/inf or memory runs out."""
    import torch

    try:
        with torch.no_grad():
            samples = estimator.sample(n)
    except (RuntimeError, MemoryError) as err:
        raise CLIError(f"-n: could not draw {n} samples ({type(err).__name__}: {err})") from None
    finite = torch.isfinite(samples).all(-1)
    if not bool(finite.all()):
        raise CLIError(
            f"model: {model} drew {int((~finite).sum())} of {n} samples with NaN or inf; "
            "the model is unusable: refit it"
        )
    return samples.tolist()


def _write_csv(rows: list[list[float]], out: Path | None, header: list[str] | None) -> None:
    """Write ``header`` (if any) and ``rows`` (8 significant digits) to stdout, or to the file
    ``out``."""
    if out is None:
        try:
            _write_rows(sys.stdout, rows, header)
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
            raise CLIError("stdout: closed before all samples were written (broken pipe)") from None
        return
    try:
        with out.open("w", newline="") as handle:
            _write_rows(handle, rows, header)
    except OSError as err:
        raise CLIError(f"--out: could not write {out} ({_reason(err)})") from None


def _write_rows(handle: Any, rows: list[list[float]], header: list[str] | None = None) -> None:
    """Write ``header`` (if any) and ``rows`` to ``handle`` as CSV, each value with 8
    significant digits."""
    writer = csv.writer(handle)
    if header is not None:
        writer.writerow(header)
    for row in rows:
        writer.writerow([f"{v:.8g}" for v in row])


def _silence_stdout() -> None:
    """Point stdout at devnull, so that Python's final flush of a closed pipe stays silent."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test's, a notebook's)
        pass


def cmd_sample(args: argparse.Namespace) -> int:
    """``pyro-nf sample``: draw samples from a saved density model, as CSV."""
    import torch

    out = _check_out_file(args.out) if args.out is not None else None
    estimator = _load_model(args.model)
    names = estimator.feature_names  # checked on load: dim names, or None
    header = None if args.no_header or names is None else list(names)
    torch.manual_seed(args.seed)
    _write_csv(_draw(estimator, args.n, args.model), out, header)
    return 0


# -- bench ----------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    """``pyro-nf bench``: run a benchmark script of a source checkout, passing ``extra`` on."""
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    script = root / BENCHMARKS[args.name]
    if not script.is_file():
        raise CLIError(
            f"bench: {script} not found; benchmarks run from a source checkout of pyro-nf "
            "(git clone, then pip install -e .)"
        )
    return subprocess.call([sys.executable, str(script), *extra])


# -- plumbing -------------------------------------------------------------------------------------


def _out_dir(path: str) -> Path:
    """The output directory ``path``, created if needed; a CLIError unless it is writable."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"--out: cannot create directory {path} ({err.strerror})") from None
    if not os.access(out, os.W_OK):
        raise CLIError(f"--out: directory {path} is not writable")
    return out


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not (0 < value < 1) or math.isnan(value):
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return value


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value}")
    return value


def _seed_type(low: int, high: int) -> Callable[[str], int]:
    """argparse type: an integer seed in ``[low, high]`` (the range the seeded RNGs accept)."""

    def seed(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected an integer in [{low}, {high}], got {text!r}"
            )
        return value

    return seed


def _version() -> str:
    """The installed version of pyro-nf (the package's ``__version__`` if not installed)."""
    from importlib import metadata

    try:
        return metadata.version("pyro-nf")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree on sys.path
        return str(getattr(sys.modules.get(__package__ or "pyro_nf"), "__version__", "unknown"))


def _one_line(text: str) -> str:
    """``text`` on one line (line breaks and the indentation after them become one space)."""
    return re.sub(r"\s*[\r\n]+\s*", " ", str(text)).strip()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help with each option's default (``(default: ...)``; none shown for off switches and
    unset options)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action) or ""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2), no usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: {_one_line(message)} (see {self.prog} --help)\n")


def _parser_options() -> dict[str, Any]:
    """The options every parser of the command shares: help with defaults, the exit statuses."""
    return {"formatter_class": _HelpFormatter, "epilog": EPILOG}


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-nf`` argument parser with its four subcommands.

    Example:
        >>> build_parser().parse_args(["sample", "m.pt", "-n", "5"]).n
        5
    """
    parser = _Parser(
        prog="pyro-nf",
        description="Normalizing flows for Pyro: demo, density fitting, sampling, benchmarks.",
        **_parser_options(),
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo_parser(sub)
    _add_fit_density_parser(sub)
    _add_sample_parser(sub)
    _add_bench_parser(sub)
    return parser


def _add_demo_parser(sub: Any) -> None:
    """The ``demo`` subcommand and its options."""
    demo = sub.add_parser(
        "demo",
        help="fit flows on built-in problems; print a table, write PNGs",
        description="Fit planar, radial and IAF flows to the 2D energies U1 and U2 (exact log Z) by "
        "reverse KL, and Gaussian guides vs pyro-nf's FlowGuide to the eight schools funnel, "
        "scored against a shipped NUTS reference; print the results and write PNGs and JSON to "
        "--out.",
        **_parser_options(),
    )
    demo.add_argument("--out", default="out", help="output directory (created if needed)")
    demo.add_argument(
        "--steps",
        type=_positive_int,
        default=1000,
        help="optimization steps per fit (about a minute of CPU in all at the default)",
    )
    demo.add_argument(
        "--seed", type=_seed_type(0, 2**32 - 1), default=0, help="random seed of every fit"
    )
    demo.add_argument("--quick", action="store_true", help="300 steps per fit (smoke test)")
    demo.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars (default: bars on stderr when it is a terminal)",
    )


def _add_fit_density_parser(sub: Any) -> None:
    """The ``fit-density`` subcommand and its options."""
    fit = sub.add_parser(
        "fit-density",
        help="fit a flow to a CSV file by maximum likelihood",
        description="Fit a flow to the rows of a numeric UTF-8 CSV file (a header line is skipped) "
        "by maximum likelihood with a validation split and early stopping; save it with --out.",
        **_parser_options(),
    )
    fit.add_argument("data", help="CSV file, one sample per row, an optional header line")
    fit.add_argument("--flow", choices=cli_families(), default="maf", help="flow family")
    fit.add_argument("--depth", type=_positive_int, default=5, help="number of flow layers")
    fit.add_argument("--out", required=True, help="where to save the fitted model (.pt)")
    fit.add_argument("--steps", type=_positive_int, default=5000, help="most optimizer steps")
    fit.add_argument("--batch-size", type=_positive_int, default=256, help="rows per minibatch")
    fit.add_argument(
        "--val-fraction", type=_fraction, default=0.1, help="fraction held out for early stopping"
    )
    fit.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate")
    fit.add_argument(
        "--no-standardize", action="store_true", help="fit the raw columns (default: standardize)"
    )
    fit.add_argument(
        "--drop-nonfinite",
        action="store_true",
        help="drop rows holding NaN or inf, with a note (default: such rows are an error)",
    )
    fit.add_argument("--seed", type=_seed_type(-(2**63), 2**64 - 1), default=0, help="random seed")
    fit.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar (default: a bar on stderr when it is a terminal)",
    )


def _add_sample_parser(sub: Any) -> None:
    """The ``sample`` subcommand and its options."""
    sample = sub.add_parser(
        "sample",
        help="draw samples from a fitted density model",
        description="Draw samples from a model saved by fit-density; CSV to stdout or --out.",
        **_parser_options(),
    )
    sample.add_argument("model", help="a .pt file written by pyro-nf fit-density")
    sample.add_argument("-n", type=_positive_int, default=1000, help="number of samples")
    sample.add_argument("--out", help="CSV output file (default: stdout)")
    sample.add_argument(
        "--no-header",
        action="store_true",
        help="write no header line (default: the training CSV's header, when it had one)",
    )
    sample.add_argument(
        "--seed", type=_seed_type(-(2**63), 2**64 - 1), default=0, help="random seed"
    )


def _add_bench_parser(sub: Any) -> None:
    """The ``bench`` subcommand; its further arguments are passed on to the script."""
    bench = sub.add_parser(
        "bench",
        help="run a benchmark script (from a source checkout)",
        description="Run benchmarks/<name>.py; further arguments (e.g. --quick) are passed on.",
        **_parser_options(),
    )
    bench.add_argument("name", choices=sorted(BENCHMARKS), help="the benchmark")


def _fail(prog: str, message: str, status: int = EXIT_ERROR) -> int:
    """Print ``prog: message`` as one line on stderr; return ``status``."""
    print(f"{prog}: {_one_line(message)}", file=sys.stderr)
    return status


def _run(prog: str, command: Callable[[], int]) -> int:
    """Run ``command``; turn every failure into one line on stderr and exit status 2 (130 for
    Ctrl-C). Warnings of a successful run are printed one line each."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            status = command()
    except CLIError as err:
        return _fail(prog, str(err), err.status)
    except KeyboardInterrupt:
        return _fail(prog, "interrupted", EXIT_INTERRUPTED)
    except MemoryError:
        return _fail(prog, "out of memory")
    except (ValueError, TypeError, OSError) as err:  # a library's check of an argument
        return _fail(prog, _cli_terms(str(err)) or type(err).__name__)
    except Exception as err:  # a bug: still one line
        return _fail("pyro-nf", f"internal error: {type(err).__name__}: {err} (please report)")
    for warning in caught:
        print(f"{prog}: warning: {_one_line(str(warning.message))}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pyro-nf`` command with ``argv``; return its exit status: 0, 2 on any error
    (one line on stderr), 130 when interrupted. Argument errors exit through ``SystemExit(2)``.

    Example:
        >>> main(["sample", "missing.pt"])
        2
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    prog = f"pyro-nf {args.command}"
    if extra and args.command != "bench":
        parser.exit(EXIT_ERROR, f"{prog}: unrecognized arguments: {' '.join(extra)}\n")
    commands: dict[str, Callable[[], int]] = {
        "demo": lambda: cmd_demo(args),
        "fit-density": lambda: cmd_fit_density(args),
        "sample": lambda: cmd_sample(args),
        "bench": lambda: cmd_bench(args, extra),
    }
    return _run(prog, commands[args.command])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
