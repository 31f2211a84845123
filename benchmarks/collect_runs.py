"""Collect the results of example runs (their `summary.json`) into benchmarks/results/runs.json, the
file the documentation's results page reads next to the papers' numbers.

One row per run and protocol: the OGBench dataset, the agent, the preset, the fine-tuned policy's
success rate at the last evaluation (and at the start, the best, and, for offline-to-online runs, at
the end of the offline phase), the steps, and the command, wall time and hardware the run recorded.
Runs made before summaries recorded their provenance are skipped with a note.

    python examples/ogbench_offline_to_online.py            # writes runs/<name>/summary.json
    python benchmarks/collect_runs.py runs/*/               # all runs under runs/
    python benchmarks/collect_runs.py runs/a runs/b --out benchmarks/results/runs.json
"""

import argparse
import json
import pathlib


def row_of(summary: dict) -> dict:
    """The results row of one run's summary."""
    evals = [e for e in summary["evals"] if "policy/success" in e]
    prov = summary["provenance"]
    row = {
        "env": summary["env"],
        "agent": summary["agent"],
        "preset": summary["preset"],
        "protocol": summary.get("protocol", "offline"),
        "success": evals[-1]["policy/success"] if evals else None,
        "start_success": evals[0]["policy/success"] if evals else None,
        "best_success": max(e["policy/success"] for e in evals) if evals else None,
        "steps": summary.get("updates", summary.get("steps")),
        "seeds": summary.get("seeds", 1),
        "eval_episodes": summary["train_config"]["eval_episodes"],
        **prov,
    }
    if row["protocol"] == "offline-to-online":
        offline = [e for e in evals if e["step"] <= summary["offline_steps"]]
        row["offline_success"] = offline[-1]["policy/success"] if offline else None
        row["online_steps"] = summary["online_steps"]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (each holding summary.json)")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "runs.json"))
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        path = pathlib.Path(run) / "summary.json"
        if not path.exists():
            print(f"skip {run}: no summary.json")
            continue
        summary = json.loads(path.read_text())
        if "provenance" not in summary:
            print(f"skip {run}: its summary.json records no command or hardware (made by an older flowsoc)")
            continue
        rows.append(row_of(summary))
        r = rows[-1]
        print(f"{r['env']}  {r['agent']}  {r['protocol']}  success {100 * r['success']:.0f}%  ({r['command']})")
    out = pathlib.Path(args.out)
    out.write_text(
        json.dumps({"benchmark": "runs", "command": "python benchmarks/collect_runs.py", "rows": rows}, indent=2)
    )
    print(f"wrote {out} ({len(rows)} runs)")


if __name__ == "__main__":
    main()
