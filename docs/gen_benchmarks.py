"""Render the JSON written by ``benchmarks/*.py`` into Markdown pages under ``docs/_generated``.

Each benchmark saves ``benchmarks/results/<name>.json`` with its machine info and either a
``markdown`` table or a plain-text ``table``; this script turns every such file (``*_quick.json``
smoke runs excepted) into ``_generated/<name>.md``, which ``benchmarks.md`` includes. Nothing in
the published tables is typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path


def _machine_line(machine: dict) -> str:
    keys = ("date", "cpu_model", "device", "gpu", "torch", "pyro", "threads")
    parts = [f"{k}: {machine[k]}" for k in keys if machine.get(k) not in (None, "")]
    return "; ".join(parts)


def _scalar(v: object) -> bool:
    return isinstance(v, str | int | float | bool) or v is None


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def rows_table(rows: list[dict]) -> str:
    """A Markdown table of the scalar fields of a list of result rows."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k, v in row.items() if _scalar(v) and k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(row.get(k)) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def render(data: dict, name: str) -> str:
    lines = [f"### `{name}`", ""]
    if data.get("command"):
        lines += [
            f"Command: `python benchmarks/{data['command']}`"
            if not str(data["command"]).startswith("python")
            else f"Command: `{data['command']}`",
            "",
        ]
    if isinstance(data.get("machine"), dict):
        lines += [f"Machine: {_machine_line(data['machine'])}", ""]
    if data.get("markdown"):
        lines += [data["markdown"].rstrip(), ""]
    elif data.get("table"):
        lines += ["```text", data["table"].rstrip(), "```", ""]
    else:
        for key in ("rows", "results"):
            rows = data.get(key)
            if isinstance(rows, list) and rows and isinstance(rows[0], dict):
                lines += [rows_table(rows), ""]
                break
    problems = data.get("problems")
    if isinstance(problems, dict):
        for pname, pdata in problems.items():
            if isinstance(pdata, dict) and isinstance(pdata.get("table"), str):
                lines += [f"**{pname}**", "", "```text", pdata["table"].rstrip(), "```", ""]
                if pdata.get("verdict"):
                    lines += [f"Verdict: {pdata['verdict']}", ""]
    if isinstance(data.get("settings"), dict):
        settings = {k: v for k, v in data["settings"].items() if _scalar(v)}
        lines += ["Settings: " + ", ".join(f"{k}={_fmt(v)}" for k, v in settings.items()), ""]
    for key in ("verdicts", "notes"):
        items = data.get(key)
        if isinstance(items, list) and items:
            lines += [f"**{key.capitalize()}**", ""]
            lines += [
                f"- {item}" if isinstance(item, str) else f"- `{json.dumps(item)}`"
                for item in items
            ]
            lines.append("")
    return "\n".join(lines)


def write_all(results_dir: Path, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.md"):
        stale.unlink()
    written = []
    for path in sorted(Path(results_dir).glob("*.json")):
        if path.stem.endswith("_quick"):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        target = out_dir / f"{path.stem}.md"
        target.write_text(render(data, path.stem))
        written.append(target)
    index = out_dir / "all.md"
    index.write_text(
        "\n".join(p.read_text() for p in written) if written else "No benchmark results yet.\n"
    )
    return written


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    for p in write_all(
        root / "benchmarks" / "results", Path(__file__).resolve().parent / "_generated"
    ):
        print(p)
