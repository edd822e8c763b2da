"""Render the JSON written by ``benchmarks/*.py`` into the benchmark pages under ``docs/_generated``.

Every ``benchmarks/results/<name>.json`` (``*_quick.json`` smoke runs excepted) is shown on one
page of a section (:data:`SECTIONS`): its command, machine and settings, its tables as real
HTML tables (a ``markdown`` table as is, a plain-text ``table`` parsed column by column, or a list
of result rows), its notes and verdicts, and a chart drawn from the numbers where one is
registered (:data:`CHARTS`). Files no section claims land on an "Other results" page with the
generic rendering, so a new benchmark appears without editing anything; to give it a section,
add a :class:`Section` (and, optionally, a chart function) below. Nothing in the published
tables is typed by hand.

Charts are PNGs written next to the pages (``_generated/img``), redrawn only when their JSON is
newer than the picture.
"""

from __future__ import annotations

import fnmatch
import json
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Section:
    """One page: the results files it shows (glob patterns of their stems), in this order."""

    slug: str
    title: str
    intro: str
    patterns: tuple[str, ...]
    #: patterns whose files are shown together as one table of runs (``group_table``)
    groups: tuple[str, ...] = field(default=())


SECTIONS: list[Section] = [
    Section(
        "guides",
        "Flow guides against NUTS and exact posteriors",
        "Posterior accuracy of `FlowGuide` against Pyro's autoguides on models with a known or "
        "NUTS reference posterior (`benchmarks/guides.py`, `benchmarks/hard_posteriors.py`): "
        "errors of the posterior means in posterior sds, errors of the log sds, PSIS k̂ and time.",
        ("guides", "guides_*", "hard_posteriors", "time_to_accuracy", "time_to_accuracy_*"),
    ),
    Section(
        "vae",
        "VAEs with flow encoders",
        "Static binarized MNIST (`benchmarks/vae.py`, `examples/vae.py --table`): test ELBO and "
        "importance-weighted −log p(x) per posterior, and the time per epoch against Pyro's "
        "conditional flows.",
        ("vae_table_*", "vae_cpu", "vae_cpu_timing_run*", "vae_*"),
        groups=("vae_cpu_timing_run*",),
    ),
    Section(
        "energies",
        "2D energies: reverse KL against Pyro",
        "Rezende & Mohamed's energies U1–U4 fitted by reverse KL with pyro-nf's and Pyro's "
        "flows in the same loop (`benchmarks/energies.py`).",
        ("energies", "energies_*"),
    ),
    Section(
        "density",
        "Density estimation",
        "Maximum-likelihood fits of flows to data.",
        ("density", "density_*"),
    ),
    Section(
        "speed",
        "Speed of flows",
        "Time per optimizer step of pyro-nf's flows against Pyro's, measured side by side "
        "(`benchmarks/flow_speed.py`).",
        ("flow_speed", "spline_speed", "*_speed"),
    ),
]
OTHER = Section("other", "Other results", "Results files that no section above claims.", ("*",))


# --- tables -------------------------------------------------------------------------------
def _cell(v: object) -> str:
    if isinstance(v, float):
        text = f"{v:.4g}"
    elif isinstance(v, list | tuple) and all(_scalar(x) for x in v) and len(v) <= 6:
        text = ", ".join(_cell(x) for x in v)
    else:
        text = "" if v is None else str(v)
    return text.replace("|", "\\|").replace("\n", " ")


def _scalar(v: object) -> bool:
    return isinstance(v, str | int | float | bool) or v is None


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A MyST (pipe) table; cells are escaped."""
    esc = [h.replace("|", "\\|") for h in header]
    lines = ["| " + " | ".join(esc) + " |", "|" + "---|" * len(header)]
    for row in rows:
        row = list(row) + [""] * (len(header) - len(row))
        lines.append("| " + " | ".join(row[: len(header)]) + " |")
    return "\n".join(lines)


def rows_table(rows: list[dict], max_rows: int = 80) -> str:
    """A table of the scalar (and short list) fields of a list of result rows."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k, v in row.items() if k not in keys and _short(v)]
    body = [[_cell(row.get(k)) for k in keys] for row in rows[:max_rows]]
    text = markdown_table(keys, body)
    if len(rows) > max_rows:
        text += f"\n\n(the first {max_rows} of {len(rows)} rows; all are in the JSON file)"
    return text


def _short(v: object) -> bool:
    return (
        _scalar(v)
        and len(str(v)) <= 80
        or (isinstance(v, list) and len(v) <= 6 and all(_scalar(x) for x in v))
    )


_RULE = re.compile(r"^[-=+| ]*[-=]{3,}[-=+| ]*$")


def text_tables(text: str) -> str:
    """Plain-text tables (``a | b`` rows under a ``---+---`` rule) as MyST tables; any other
    text stays a code block."""
    out, plain = [], []
    lines = text.rstrip().splitlines()
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and "|" in lines[i] and _RULE.match(lines[i + 1]):
            if plain:
                out.append(_code(plain))
                plain = []
            header = [c.strip() for c in _columns(lines[i])]
            rows, i = [], i + 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                if not _RULE.match(lines[i]):
                    rows.append([_escape(c) for c in _columns(lines[i])])
                i += 1
            out.append(markdown_table(header, rows))
        else:
            if lines[i].strip() or plain:
                plain.append(lines[i])
            i += 1
    if plain and any(line.strip() for line in plain):
        out.append(_code(plain))
    return "\n\n".join(out)


def _columns(line: str) -> list[str]:
    """The cells of a plain-text row: columns are separated by ``" | "`` (a bar between
    spaces), so a header such as ``|log sd ratio|`` stays one cell."""
    return re.split(r" \| ", f" {line.strip()} ")


def _escape(cell: str) -> str:
    cell = cell.strip().replace("|", "\\|")
    return cell.replace("*", "\\*") if cell.endswith("*") else cell


def _code(lines: list[str]) -> str:
    return "```text\n" + "\n".join(lines).strip("\n") + "\n```"


# --- one results file -------------------------------------------------------------------------
def _machine_line(machine: dict) -> str:
    keys = ("date", "cpu_model", "device", "gpu", "torch", "pyro", "torch_threads", "threads")
    return "; ".join(f"{k}: {machine[k]}" for k in keys if machine.get(k) not in (None, ""))


def _command(data: dict) -> list[str]:
    command = data.get("command")
    if not command:
        return []
    command = str(command)
    if not command.startswith("python"):
        command = f"python benchmarks/{command}"
    return [f"**Command:** `{command}`", ""]


def _settings(data: dict) -> list[str]:
    settings = data.get("settings")
    if not isinstance(settings, dict):
        return []
    shown = {k: v for k, v in settings.items() if _short(v)}
    return ["**Settings:** " + ", ".join(f"{k}={_cell(v)}" for k, v in shown.items()), ""]


def _tables(data: dict) -> list[str]:
    lines = []
    seeds, verdicts = data.get("seeds_markdown"), data.get("seed_verdicts")
    if isinstance(seeds, str) and seeds.strip():  # runs over several seeds: the summary first
        lines += ["**Over seeds** (score = max(mean err, log sd) of a run)", "", seeds.rstrip(), ""]
        if isinstance(verdicts, dict) and verdicts:
            lines += [f"- {v['text']}" for v in verdicts.values() if isinstance(v, dict)] + [""]
        lines += ["**Every run**", ""]
    if isinstance(data.get("markdown"), str) and data["markdown"].strip():
        lines += [data["markdown"].rstrip(), ""]
        inv = data.get("investigation_markdown")
        if isinstance(inv, str) and inv.strip():
            lines += ["**Investigation** (FlowGuide with non-default arguments)", "", inv, ""]
        return lines
    if isinstance(data.get("table"), str) and data["table"].strip():
        return [text_tables(data["table"]), ""]
    for key in ("rows", "results", "summary"):
        rows = data.get(key)
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            return [rows_table(rows), ""]
    return []


def _problems(data: dict) -> list[str]:
    lines = []
    problems = data.get("problems")
    for pname, pdata in (problems or {}).items() if isinstance(problems, dict) else []:
        if isinstance(pdata, dict) and isinstance(pdata.get("table"), str):
            lines += [f"**{pname}**", "", text_tables(pdata["table"]), ""]
    return lines


def _lists(data: dict) -> list[str]:
    lines = []
    for key in ("verdicts", "notes"):
        items = data.get(key)
        if isinstance(items, list) and items:
            if all(isinstance(x, dict) for x in items):
                lines += [f"**{key.capitalize()}**", "", rows_table(items), ""]
                continue
            lines += [f"**{key.capitalize()}**", ""]
            lines += [f"- {x}" if isinstance(x, str) else f"- `{json.dumps(x)}`" for x in items]
            lines.append("")
    return lines


def render(data: dict, name: str, chart: str | None = None) -> str:
    """The Markdown of one results file (a ``##`` section of its page)."""
    lines = [f"## {TITLES.get(name, name)}", "", f"From `benchmarks/results/{name}.json`.", ""]
    if isinstance(data.get("description"), str):
        lines += [data["description"], ""]
    lines += _command(data)
    if isinstance(data.get("machine"), dict):
        lines += [f"**Machine:** {_machine_line(data['machine'])}", ""]
    if chart:
        lines += [f"![{name}]({chart})", ""]
    lines += _tables(data) + _problems(data) + _settings(data) + _lists(data)
    return "\n".join(lines)


#: Headings of the known results files (the file name otherwise).
TITLES = {
    "guides": "Guides on three posteriors (seeds 0–2)",
    "guides_flowguide_iaf_only": "FlowGuide(iaf) alone, same problems",
    "hard_posteriors": "Hard posteriors: FlowGuide against Pyro's autoguides",
    "vae_table_mnist": "MNIST, 10 epochs",
    "vae_table_mnist_converged": "MNIST, trained to convergence",
    "vae_table_mnist_lr_decay": "MNIST, with a learning-rate decay at the plateau",
    "vae_cpu": "Time per epoch, CPU",
    "energies": "U1–U4 × family × K, against Pyro",
    "flow_speed": "Time per step, pyro-nf against Pyro",
}


# --- grouped runs ---------------------------------------------------------------------------
def group_table(runs: dict[str, dict]) -> str:
    """Several runs of one timing benchmark as one table: one row per ratio (wall times), one
    column per run, and the median over the runs; the runs' dates follow the table."""
    ratio_names: list[str] = []
    for data in runs.values():
        ratio_names += [k for k in data.get("ratios", {}) if k not in ratio_names]
    short = [name.rsplit("_", 1)[-1] for name in runs]
    body = []
    for k in ratio_names:
        walls = [data.get("ratios", {}).get(k, {}).get("wall") for data in runs.values()]
        values = [w for w in walls if isinstance(w, int | float)]
        body.append([k.replace("|", "/"), _median_cell(values)] + [_cell(w) for w in walls])
    table = markdown_table(["ratio (wall time per epoch)", "median", *short], body)
    dates = [
        f"{s}: {str(d.get('machine', {}).get('date', ''))[:16]}"
        for s, d in zip(short, runs.values(), strict=True)
    ]
    return table + "\n\nRuns: " + "; ".join(dates) + "."


def _median_cell(values: list[float]) -> str:
    return f"**{statistics.median(values):.3g}**" if values else ""


# --- charts ---------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chart_ratio_runs(runs: dict[str, dict], path: Path) -> None:
    """Bars of each timing ratio per run, with the median as a line."""
    plt = _pyplot()
    names = sorted({k for d in runs.values() for k in d.get("ratios", {})})
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
    for ax, ratio in zip(axes[0], names, strict=True):
        labels = [r.rsplit("_", 1)[-1] for r in runs]
        vals = [runs[r].get("ratios", {}).get(ratio, {}).get("wall", float("nan")) for r in runs]
        ax.bar(labels, vals, color="tab:blue")
        finite = [v for v in vals if v == v]
        if finite:
            med = statistics.median(finite)
            ax.axhline(med, color="k", ls="--", lw=1, label=f"median {med:.2f}")
            ax.legend(fontsize="small")
        ax.set_title(_wrap(ratio), fontsize="small")
        ax.set_ylabel("ratio of wall times per epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _wrap(text: str, width: int = 42) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width and line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join([*lines, line])


def chart_flow_speed(data: dict, path: Path) -> None:
    """Median Pyro/pyro-nf time-per-step ratio per (family, D, K)."""
    plt = _pyplot()
    labels, ratios = [], []
    for r in data["results"]:
        steps = r["per_step_s"]
        if steps.get("pyro") and steps.get("pyro_nf"):
            labels.append(f"{r['family']} D={r['dim']} K={r['depth']}")
            ratios.append(statistics.median(steps["pyro"]) / statistics.median(steps["pyro_nf"]))
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(labels) + 1.2))
    ax.barh(labels[::-1], ratios[::-1], color="tab:green")
    ax.axvline(1.0, color="k", lw=1)
    ax.set_xlabel("Pyro time per step / pyro-nf time per step (median; > 1: pyro-nf faster)")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def chart_energies(data: dict, path: Path) -> None:
    """KL of pyro-nf against KL of Pyro per cell (log-log; below the diagonal: pyro-nf closer)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for family in sorted({r["family"] for r in data["summary"]}):
        rows = [r for r in data["summary"] if r["family"] == family]
        pts = [
            (r["pyro_kl"], r["pyro_nf_kl"])
            for r in rows
            if r.get("pyro_kl") and r.get("pyro_nf_kl")
        ]
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=14, label=family, alpha=0.8)
    ax.plot([1e-3, 10], [1e-3, 10], color="k", lw=1)
    ax.set(
        xscale="log", yscale="log", xlabel="KL(q‖p), Pyro (nats)", ylabel="KL(q‖p), pyro-nf (nats)"
    )
    ax.set_title("one point per cell (energy, family, K, steps, ...)", fontsize="small")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def chart_guides(data: dict, path: Path) -> None:
    """k̂ and the mean error (in posterior sds) per guide and problem."""
    plt = _pyplot()
    problems = data["problems"]
    fig, axes = plt.subplots(len(problems), 1, figsize=(7, 2.4 * len(problems)), squeeze=False)
    for ax, (pname, pdata) in zip(axes[:, 0], problems.items(), strict=True):
        summary = pdata["summary"]
        guides = list(summary)
        ax.barh(guides[::-1], [summary[g]["mean_err"] for g in guides[::-1]], color="tab:purple")
        ax.set_xscale("log")
        ax.set_title(pname, fontsize="small")
        ax.set_xlabel("max |mean error| / posterior sd")
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def chart_hard_posteriors(data: dict, path: Path) -> None:
    """Median score (max of the mean error in posterior sds and the log-sd error) per model and
    guide, over seeds."""
    plt = _pyplot()
    models = list(dict.fromkeys(r["model"] for r in data["results"]))
    guides = list(dict.fromkeys(r["guide"] for r in data["results"]))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(guides)
    for j, guide in enumerate(guides):
        vals = []
        for m in models:
            errs = [
                max(r["mean_err"], r["log_sd_err"])
                for r in data["results"]
                if r["model"] == m and r["guide"] == guide
            ]
            errs = [e for e in errs if isinstance(e, int | float)]
            vals.append(statistics.median(errs) if errs else float("nan"))
        ax.bar([i + j * width for i in range(len(models))], vals, width, label=guide)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(models))], models)
    ax.set(yscale="log", ylabel="max(mean err, log sd)\n(median over seeds)")
    ax.legend(fontsize="small", ncols=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def chart_vae_curves(data: dict, path: Path) -> None:
    """Validation −ELBO per epoch of each row of a VAE table."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for row in data["rows"]:
        val = row.get("val_losses") or []
        points = [
            (v[0], v[1]) if isinstance(v, list | tuple) else (i + 1, v) for i, v in enumerate(val)
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, lw=1.2, label=row.get("label", row.get("flow", "?")))
    ax.set(xlabel="validation point (step or epoch)", ylabel="validation −ELBO (nats)")
    ax.legend(fontsize="x-small", ncols=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: Chart functions by results-file pattern: ``f(data, png_path)``; the first match draws.
CHARTS: list[tuple[str, Callable[[dict, Path], None]]] = [
    ("flow_speed", chart_flow_speed),
    ("energies", chart_energies),
    ("guides", chart_guides),
    ("guides_*", chart_guides),
    ("hard_posteriors", chart_hard_posteriors),
    ("vae_table_*", chart_vae_curves),
]


def _chart(name: str, data: dict, src: Path, img_dir: Path) -> tuple[str | None, str | None]:
    """Draw the registered chart of ``name`` (if stale); ``(relative path, problem)``."""
    for pattern, draw in CHARTS:
        if fnmatch.fnmatch(name, pattern):
            png = img_dir / f"{name}.png"
            try:
                if not png.exists() or png.stat().st_mtime < src.stat().st_mtime:
                    draw(data, png)
            except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as e:
                return None, f"the chart was not drawn: the JSON lacks what it needs ({e!r})"
            return f"img/{png.name}", None
    return None, None


# --- pages ---------------------------------------------------------------------------------
def _load(results_dir: Path) -> dict[str, tuple[Path, dict]]:
    found = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        if path.stem.endswith("_quick"):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            found[path.stem] = (path, data)
    return found


def _claim(files: dict, section: Section, taken: set[str]) -> list[str]:
    names = []
    for pattern in section.patterns:
        names += [
            n for n in files if fnmatch.fnmatch(n, pattern) and n not in taken and n not in names
        ]
    taken.update(names)
    return names


def _section_page(section: Section, names: list[str], files: dict, img_dir: Path) -> str:
    lines = [f"# {section.title}", "", section.intro, ""]
    done: set[str] = set()
    for pattern in section.groups:
        group = {n: files[n][1] for n in names if fnmatch.fnmatch(n, pattern)}
        if group:
            png = img_dir / f"group_{pattern.strip('*_')}.png"
            newest = max(files[n][0].stat().st_mtime for n in group)
            if not png.exists() or png.stat().st_mtime < newest:
                chart_ratio_runs(group, png)
            lines += [f"## Repeated timing runs ({len(group)} files `{pattern}.json`)", ""]
            lines += [f"![timing ratios](img/{png.name})", "", group_table(group), ""]
            done.update(group)
    for name in names:
        if name in done:
            continue
        path, data = files[name]
        chart, problem = _chart(name, data, path, img_dir)
        lines.append(render(data, name, chart))
        if problem:
            lines += [f"*Note: {problem}.*", ""]
    return "\n".join(lines)


def write_all(results_dir: Path, out_dir: Path) -> list[Path]:
    """Write one page per non-empty section and ``sections.inc`` (their toctree, included by
    ``benchmarks.md``); return the pages."""
    out_dir.mkdir(parents=True, exist_ok=True)
    img_dir = out_dir / "img"
    img_dir.mkdir(exist_ok=True)
    files = _load(results_dir)
    taken: set[str] = set()
    written = []
    for section in [*SECTIONS, OTHER]:
        names = _claim(files, section, taken)
        if not names:
            continue
        page = out_dir / f"{section.slug}.md"
        _write(page, _section_page(section, names, files, img_dir))
        written.append(page)
    for stale in out_dir.glob("*.md"):
        if stale not in written:
            stale.unlink()
    toc = ["```{toctree}", ":maxdepth: 1", ""] + [f"_generated/{p.stem}" for p in written]
    if not written:
        toc = ["No benchmark results yet."]
    _write(out_dir / "sections.inc", "\n".join([*toc, "```" if written else ""]) + "\n")
    return written


def _write(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    for p in write_all(
        root / "benchmarks" / "results", Path(__file__).resolve().parent / "_generated"
    ):
        print(p)
