"""MkDocs hook: build the tables of docs/results.md from benchmarks/results/*.json at build time.

Placeholders in results.md (an HTML comment on a line of its own):

- `<!-- results:paper -->`: the papers' offline success rates (the TRQAM paper's table, and the SQAM
  paper's column), with a flowsoc column for each agent that the results files hold runs of on the ten
  domains (none when they hold none), then the RL runs table and, apart from it, the success rates
  of other benchmarks (the ant expert). A run is a row, in any results file, that carries an OGBench
  `env`, an `agent` (its own or its file's) and a success rate (`success`, `success_rate` or
  `final_success` as a fraction in [0, 1], or `success_pct` in percent); a row with `env` and a
  success rate but no agent is another benchmark's. Rows of one task (e.g. one per seed) are averaged
  first, then tasks. Commands and hardware are listed under the runs table, not in its columns.
- `<!-- results:benchmarks -->`: one section per JSON file: what the script measures (the first
  paragraph of its docstring), the command that produced the file (its `command` field, else
  `python benchmarks/<name>.py`), the hardware and software recorded in the file, and its numbers
  as tables.

Nothing here is typed by hand except the papers' numbers, which are published constants.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import pathlib
import re
from typing import Any


log = logging.getLogger("mkdocs.hooks.results")

PAPER_PLACEHOLDER = "<!-- results:paper -->"
BENCHMARKS_PLACEHOLDER = "<!-- results:benchmarks -->"

# Offline OGBench success rates (%), 50 tasks (5 per domain), 1M steps, 8 seeds: the TRQAM paper
# (the TRQAM paper's offline table, as its authors' blog prints it; QAM and QAM-E rows from the same table).
PAPER_DOMAINS = (
    "antmaze-large",
    "antmaze-giant",
    "humanoidmaze-medium",
    "humanoidmaze-large",
    "scene",
    "puzzle-3x3",
    "puzzle-4x4",
    "cube-double",
    "cube-triple",
    "cube-quadruple",
)
# Keyed by the agents' names in the runs (`--agent`, the `agent` field of a row).
PAPER = {
    "trqam": dict(zip(PAPER_DOMAINS, (89, 41, 84, 36, 79, 100, 99, 81, 50, 19)), all=68),
    "qam": dict(zip(PAPER_DOMAINS, (62, 29, 64, 4, 64, 15, 1, 71, 19, 18)), all=35),
    "qame": dict(zip(PAPER_DOMAINS, (86, 6, 60, 4, 63, 89, 54, 71, 11, 9)), all=45),
    # The SQAM paper (the TRQAM authors' "Q-Learning with Scalar Adjoint Matching"): the same 50 tasks, 1M
    # steps, 8 seeds, as its authors report them (also flowsoc.rl.ogbench.SQAM_REPORTED, not imported here).
    "sqam": dict(zip(PAPER_DOMAINS, (91, 62, 94, 54, 79, 100, 85, 58, 72, 54)), all=75),
}
# QAM's own paper (12 seeds, its released curves at 1M offline steps): all-task means only.
QAM_OWN_PAPER = {"qam": 44, "qame": 46}
# The agents' display names and the order of their columns; an agent not named here follows, by name.
AGENT_LABELS = {"trqam": "TRQAM", "qam": "QAM", "qame": "QAM-E", "qamf": "QAM-F", "bam": "BAM", "sqam": "SQAM"}

# Keys describing where and how a file was produced (shown once, not as measurements).
HARDWARE_KEYS = ("machine", "platform", "processor", "device", "devices", "cpu_count", "python", "jax")
META_KEYS = ("benchmark", "command") + HARDWARE_KEYS
SUCCESS_KEYS = ("success", "success_rate", "final_success")  # fractions in [0, 1]


# ------------------------------------------------------------------------------------ formatting


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4g}"
    if value is None:
        return "—"
    if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
        return ", ".join(_fmt(v) for v in value)
    text = str(value) if not isinstance(value, (dict, list)) else json.dumps(value)
    return text.replace("|", "\\|")


def _label(key: str) -> str:
    return key.replace("_", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, (dict, list)) or (
        isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value)
    )


def _records_table(records: list[dict], name_col: str | None = None, names: list[str] | None = None) -> str:
    columns: list[str] = []
    for rec in records:
        for k, v in rec.items():
            if k not in columns and _is_scalar(v):
                columns.append(k)
    header = ([name_col] if name_col is not None else []) + [_label(c) for c in columns]
    rows = [([names[i]] if names is not None else []) + [rec.get(c) for c in columns] for i, rec in enumerate(records)]
    return _table(header, rows)


def _render_value(key: str, value: Any, depth: int) -> list[str]:
    """Markdown blocks for one entry of a results file (recursing into nested dicts)."""
    heading = "#" * min(3 + depth, 6)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [_records_table(value)]
    if isinstance(value, dict):
        scalars = {k: v for k, v in value.items() if _is_scalar(v)}
        tables = {k: v for k, v in value.items() if isinstance(v, dict) and all(_is_scalar(x) for x in v.values())}
        rest = {k: v for k, v in value.items() if k not in scalars and k not in tables}
        blocks = []
        if tables:
            names = list(tables)
            blocks.append(_records_table([tables[n] for n in names], "", [f"`{n}`" for n in names]))
        if scalars:
            blocks.append(_table(["", "value"], [[_label(k), v] for k, v in scalars.items()]))
        for k, v in rest.items():
            blocks.append(f"{heading} {_label(k)}")
            blocks.extend(_render_value(k, v, depth + 1))
        return blocks
    return [_table(["", "value"], [[_label(key), value]])]


# ------------------------------------------------------------------------------------ results files


def _load(results_dir: pathlib.Path) -> list[tuple[pathlib.Path, dict]]:
    out = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            log.warning("results hook: cannot read %s: %s", path, err)
            continue
        if isinstance(record, dict):
            out.append((path, record))
        else:
            log.warning("results hook: %s does not hold a JSON object; skipped", path)
    return out


def _command(path: pathlib.Path, record: dict, root: pathlib.Path) -> str:
    if record.get("command"):
        return str(record["command"])
    script = root / "benchmarks" / f"{path.stem}.py"
    return f"python benchmarks/{script.name}" if script.exists() else "(not recorded)"


def _description(path: pathlib.Path, root: pathlib.Path) -> str:
    """The benchmark script's docstring up to its first indented (command) block."""
    script = root / "benchmarks" / f"{path.stem}.py"
    if not script.exists():
        return ""
    try:
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    except SyntaxError:
        return ""
    kept = []
    for paragraph in doc.strip().split("\n\n"):
        lines = paragraph.splitlines()
        if lines and all(line.startswith("    ") for line in lines if line.strip()):
            break  # the usage block (`    python benchmarks/...`): the command is shown separately
        kept.append(paragraph)
    return "\n\n".join(kept)


def _hardware(record: dict) -> str:
    parts = []
    machine = record.get("machine") if isinstance(record.get("machine"), dict) else {}
    merged = {**{k: record[k] for k in HARDWARE_KEYS if k in record and k != "machine"}, **machine}
    for key in ("devices", "device", "cpu_count", "processor", "platform", "jax", "python"):
        value = merged.get(key)
        if value in (None, "", []):
            continue
        label = {"cpu_count": "CPU cores", "devices": "devices", "device": "device"}.get(key, key)
        parts.append(f"{label}: `{_fmt(value)}`")
    return "; ".join(parts) if parts else "not recorded"


def _benchmark_section(path: pathlib.Path, record: dict, root: pathlib.Path) -> str:
    title = record.get("benchmark") or path.stem
    blocks = [f"### `{title}`"]
    description = _description(path, root)
    if description:
        blocks.append(description)
    blocks.append(
        f"- command: `{_command(path, record, root)}`\n"
        f"- hardware: {_hardware(record)}\n"
        f"- file: `benchmarks/results/{path.name}`"
    )
    body = {k: v for k, v in record.items() if k not in META_KEYS}
    rows = body.get("rows")
    if isinstance(rows, list) and rows and all(_is_run(r, record) for r in rows):
        body.pop("rows")
        blocks.append(
            f"Its {len(rows)} row{'s are' if len(rows) != 1 else ' is'}, with the command and hardware, "
            "in [RL runs measured with flowsoc](#rl-runs-measured-with-flowsoc) above."
        )
    settings = {k: v for k, v in body.items() if _is_scalar(v)}
    if settings:
        blocks.append("Settings and summary: " + ", ".join(f"{_label(k)} = `{_fmt(v)}`" for k, v in settings.items()))
    for key, value in body.items():
        if key in settings:
            continue
        if key != "rows":
            blocks.append(f"#### {_label(key)}")
        blocks.extend(_render_value(key, value, 1))
    return "\n\n".join(blocks)


# ------------------------------------------------------------------------------------ paper table


def _is_run(row: Any, record: dict) -> bool:
    """Whether a row is an RL run (shown in the runs table): an OGBench env, an agent and a success rate."""
    return (
        isinstance(row, dict)
        and isinstance(row.get("env"), str)
        and row.get("agent", record.get("agent")) is not None
        and _success(row) is not None
    )


def _domain(env: str) -> str:
    """OGBench dataset or domain name -> the paper's domain key (`cube-double-play-singletask-task2-v0`
    -> `cube-double`)."""
    name = re.sub(r"^visual-", "", env)
    name = re.sub(r"(-singletask(-task\d+)?)?(-oraclerep)?-v\d+$", "", name)
    name = re.sub(r"-(play|noisy|navigate|stitch|explore)(-\d+m)?$", "", name)
    return name


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _agent_key(agent: Any) -> str:
    """A row's agent as the papers' table keys it: lower case, `QAM-E` and `qam_e` read as `qame`."""
    name = str(agent).lower()
    compact = name.replace("-", "").replace("_", "")
    return compact if compact in AGENT_LABELS else name


def _agent_label(agent: str) -> str:
    return AGENT_LABELS.get(agent, agent)


def _success(row: dict) -> float | None:
    """The success rate of a row in percent."""
    if _number(row.get("success_pct")) is not None:
        return _number(row["success_pct"])
    for key in SUCCESS_KEYS:
        value = _number(row.get(key))
        if value is not None:
            if not 0.0 <= value <= 1.0:
                log.warning("results hook: %s = %s is not a fraction in [0, 1]; row skipped", key, value)
                return None
            return 100.0 * value
    return None


def _measured_rows(loaded: list[tuple[pathlib.Path, dict]], root: pathlib.Path) -> list[dict]:
    """Rows `{env, success, ...}` found anywhere in the results files, with the file's command and hardware.

    A row with an `agent` (its own or its file's) is an RL run; one without (e.g. the ant expert's
    navigation test in experts.json) is another benchmark's success rate, kept out of the runs table.
    `where` is the row's place in its file (`shipped_expert › navigation`)."""

    def walk(node: Any, where: tuple[str, ...]):
        if isinstance(node, dict):
            if isinstance(node.get("env"), str) and _success(node) is not None:
                yield node, where
                return
            for key, value in node.items():
                yield from walk(value, where + (str(key),))
        elif isinstance(node, list):
            for value in node:
                yield from walk(value, where)

    found = []
    for path, record in loaded:
        for row, where in walk(record, ()):
            agent = row.get("agent", record.get("agent"))
            found.append(
                dict(
                    domain=_domain(row["env"]),
                    env=row["env"],
                    agent=_agent_key(agent) if agent is not None else None,
                    where=" › ".join(_label(w) for w in where if w != "rows"),
                    row=row,
                    success=_success(row),
                    seeds=row.get("seeds", record.get("seeds")),
                    steps=row.get("steps", record.get("steps")),
                    command=row.get("command") or _command(path, record, root),
                    hardware=_hardware(row) if any(k in row for k in HARDWARE_KEYS) else _hardware(record),
                    file=path.name,
                )
            )
    return found


def _pct(row: dict, key: str) -> str | None:
    value = _number(row.get(key))
    return None if value is None else f"{100 * value:.0f}"


def _runs_table(runs: list[dict]) -> str:
    """The RL runs, one row each; their commands and hardware as a numbered list below the table (a
    table column would be a few characters wide)."""
    optional = [  # (column, value of a run), shown when at least one run has it
        ("preset", lambda r: r["row"].get("preset")),
        ("protocol", lambda r: r["row"].get("protocol")),
        ("success at start %", lambda r: _pct(r["row"], "start_success")),
        ("after offline %", lambda r: _pct(r["row"], "offline_success")),
        ("best %", lambda r: _pct(r["row"], "best_success")),
        ("steps", lambda r: r["steps"]),
        ("online steps", lambda r: r["row"].get("online_steps")),
        ("seeds", lambda r: r["seeds"]),
        ("eval episodes", lambda r: r["row"].get("eval_episodes")),
        ("wall time", lambda r: _duration(r["row"].get("wall_s"))),
    ]
    shown = [(name, get) for name, get in optional if any(get(r) is not None for r in runs)]
    header = ["run", "env", "agent", "success %"] + [name for name, _ in shown]
    rows = [
        [str(i), f"`{r['env']}`", r["agent"], f"{r['success']:.0f}"] + [get(r) for _, get in shown]
        for i, r in enumerate(runs, 1)
    ]
    provenance = [
        f"{i}. `{r['command']}`  \n    hardware: {r['hardware']}; file: `benchmarks/results/{r['file']}`"
        for i, r in enumerate(runs, 1)
    ]
    return _table(header, rows) + "\n\nCommand and hardware of each run:\n\n" + "\n".join(provenance)


def _duration(seconds: Any) -> str | None:
    value = _number(seconds)
    if value is None:
        return None
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.0f} min" if value < 7200 else f"{value / 3600:.1f} h"


def _other_table(rows: list[dict]) -> str:
    """Success rates that are not RL runs (e.g. the ant expert navigating antmaze), each with its file."""
    extra_keys: list[str] = []
    for r in rows:
        for k, v in r["row"].items():
            if k not in ("env", "success", "success_pct", *SUCCESS_KEYS, *META_KEYS) and _is_scalar(v):
                if k not in extra_keys:
                    extra_keys.append(k)
    header = ["benchmark", "env", "success %"] + [_label(k) for k in extra_keys] + ["command"]
    body = [
        [f"{r['where'] or 'rows'} (`{r['file']}`)", f"`{r['env']}`", f"{r['success']:.0f}"]
        + [r["row"].get(k) for k in extra_keys]
        + [f"`{r['command']}`"]
        for r in rows
    ]
    return _table(header, body)


def _paper_section(loaded: list[tuple[pathlib.Path, dict]], root: pathlib.Path) -> str:
    measured = _measured_rows(loaded, root)
    runs = sorted((r for r in measured if r["agent"] is not None), key=lambda r: (r["domain"], r["env"], r["agent"]))
    others = [r for r in measured if r["agent"] is None]
    by_domain: dict[tuple[str, str], list[dict]] = {}
    for row in runs:
        by_domain.setdefault((row["domain"], row["agent"]), []).append(row)

    def cell(domain: str, agent: str) -> str:
        rows = by_domain.get((domain, agent), [])
        if not rows:
            return ""
        per_task: dict[str, list[float]] = {}
        for r in rows:
            per_task.setdefault(r["env"], []).append(r["success"])
        mean = sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)
        tasks = len(per_task)
        return f"{mean:.0f} ({tasks} task{'s' if tasks != 1 else ''})"

    # A flowsoc column for every agent with a run on one of the ten domains, beside its paper column if any.
    measured_agents = {a for d, a in by_domain if d in PAPER_DOMAINS}
    order = list(AGENT_LABELS) + sorted(measured_agents - set(AGENT_LABELS))
    columns = []  # (header, value on a domain, value on the "all" row)
    for agent in order:
        label = _agent_label(agent)
        if agent in PAPER:
            paper_header = f"{label} (paper)" if measured_agents else label
            columns.append((paper_header, lambda d, a=agent: PAPER[a][d], PAPER[agent]["all"]))
        if agent in measured_agents:
            columns.append((f"{label} (flowsoc)", lambda d, a=agent: cell(d, a), ""))
    header = ["domain"] + [name for name, _, _ in columns]
    rows = [[d] + [value(d) for _, value, _ in columns] for d in PAPER_DOMAINS]
    rows.append(["**all 50 tasks**"] + [total for _, _, total in columns])
    blocks = [_table(header, rows)]
    if measured_agents:
        blocks.append(
            "A flowsoc cell gives the mean over the tasks measured (in brackets); an empty one was not measured."
        )
    else:
        blocks.append(
            "flowsoc has not measured any of these ten domains yet: no results file in `benchmarks/results/` "
            "holds a run on one of them, so the table has no flowsoc columns. The runs it has measured are "
            "listed below."
        )
    blocks.append(
        "TRQAM, QAM and QAM-E as the TRQAM paper reports them, SQAM as the SQAM paper does. "
        f"QAM's own paper reports QAM {QAM_OWN_PAPER['qam']} and QAM-E {QAM_OWN_PAPER['qame']} over the same 50 "
        "tasks (12 seeds)."
    )
    blocks.append("### RL runs measured with flowsoc")
    if runs:
        blocks.append(
            "Success rate (%) of the fine-tuned policy at the last evaluation, one row per run "
            "(`benchmarks/collect_runs.py` collects them into `runs.json`)."
        )
        blocks.append(_runs_table(runs))
        extra = sorted({d for d, _ in by_domain} - set(PAPER_DOMAINS))
        if extra:
            blocks.append("Domains outside the paper's ten: " + ", ".join(f"`{d}`" for d in extra) + ".")
    else:
        blocks.append(
            "None yet. A results file whose rows carry `env` (an OGBench dataset name), `agent` and `success` "
            "(a fraction in [0, 1]; or `success_pct`), optionally `seeds`, `steps` and `command`, fills this "
            "table and the flowsoc columns above on the next build; `benchmarks/collect_runs.py` writes one "
            "from the runs' `summary.json`."
        )
    if others:
        blocks.append("### Other success rates")
        blocks.append(
            "Measured by other benchmarks, not by an RL agent (e.g. the ant expert that generates the antmaze "
            "datasets, navigating the maze); their files are described under [Benchmarks](#benchmarks)."
        )
        blocks.append(_other_table(others))
    return "\n\n".join(blocks)


# ------------------------------------------------------------------------------------ the hook


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != "results.md":
        return markdown
    root = pathlib.Path(config.config_file_path).resolve().parent
    loaded = _load(root / "benchmarks" / "results")
    if PAPER_PLACEHOLDER in markdown:
        markdown = markdown.replace(PAPER_PLACEHOLDER, _paper_section(loaded, root))
    if BENCHMARKS_PLACEHOLDER in markdown:
        sections = [_benchmark_section(p, r, root) for p, r in loaded]
        text = "\n\n".join(sections) if sections else "No results files in `benchmarks/results/` yet."
        markdown = markdown.replace(BENCHMARKS_PLACEHOLDER, text)
    return markdown
