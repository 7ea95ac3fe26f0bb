"""DVC experiments side by side, one row each, in under 120 columns: the params it changed (against its baseline
commit) and the headline metrics of the model it evaluated (test accuracy, ROC-AUC, ECE, robust accuracy).

    python -m realfake.pipeline.compare              # the experiments of HEAD (make compare)
    python -m realfake.pipeline.compare --all        # of every commit
    python -m realfake.pipeline.compare --model cnn  # that model's metrics in every row

It reads `dvc exp show --json`. The model of a row is the first one whose metrics differ from the baseline's (the one
the experiment evaluated; the others' files are the baseline's, as git keeps them); `+N` says how many more changed.
Changed params are listed as `key=value`, `models.` left off the keys, cut with `…` at the line's end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from realfake.pipeline.tracking import flatten

WIDTH = 119
# (column title, metrics file folder, key path)
METRICS = (
    ("acc", "evaluate", ("accuracy",)),  # test split
    ("AUC", "evaluate", ("roc_auc",)),
    ("ECE", "evaluate", ("calibration", "ece")),
    ("robust", "robustness", ("robust_accuracy",)),
)
NAME_W, MODEL_W, METRIC_W = 22, 12, 7


def show(root: Path, *, all_commits: bool = False) -> list[dict]:
    """`dvc exp show --json` of the repository (DVC's own reader: its format, baselines with their experiments)."""
    command = [sys.executable, "-m", "dvc", "exp", "show", "--json", "--no-fetch", *(["-A"] if all_commits else [])]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`dvc exp show` failed: {done.stderr.strip()[-1000:]}")
    return json.loads(done.stdout or "[]")


def _data(rev: dict) -> tuple[dict, dict]:
    """(params.yaml's params, {metrics file: its data}) of one revision of `dvc exp show --json`."""
    data = rev.get("data") or {}
    params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
    metrics = {path: (entry or {}).get("data") or {} for path, entry in (data.get("metrics") or {}).items()}
    return params, metrics


def _headline(metrics: dict, model: str) -> list[float | None]:
    values = []
    for _, folder, path in METRICS:
        value: Any = metrics.get(f"metrics/{folder}/{model}.json") or {}
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        values.append(value if isinstance(value, int | float) and not isinstance(value, bool) else None)
    return values


def _models(metrics: dict) -> list[str]:
    return sorted({Path(p).stem for p in metrics if p.startswith("metrics/evaluate/")})


def rows(shown: list[dict], *, model: str | None = None) -> list[dict]:
    """One dict per experiment (and per baseline): name, model, `more` (other changed models), changed, baseline,
    metrics."""
    out = []
    for base in shown:
        base_params, base_metrics = _data(base)
        base_flat = flatten(base_params)
        name = base.get("name") or str(base.get("rev", ""))[:7]
        chosen = model or base_model(base_metrics)
        out.append({"name": name, "model": chosen, "more": 0, "changed": {}, "baseline": True,
                    "metrics": _headline(base_metrics, chosen)})  # fmt: skip
        for experiment in base.get("experiments") or []:
            for rev in experiment.get("revs") or [experiment]:
                params, metrics = _data(rev)
                flat = flatten(params)
                changed = {
                    k: flat.get(k) for k in sorted(set(flat) | set(base_flat)) if flat.get(k) != base_flat.get(k)
                }
                evaluated = [m for m in _models(metrics) if _headline(metrics, m) != _headline(base_metrics, m)]
                chosen = model or (evaluated[0] if evaluated else base_model(base_metrics))
                out.append({
                    "name": rev.get("name") or experiment.get("name") or str(rev.get("rev", ""))[:7],
                    "model": chosen, "more": max(len(evaluated) - 1, 0) if model is None else 0,
                    "changed": changed, "baseline": False, "metrics": _headline(metrics, chosen),
                })  # fmt: skip
    return out


def base_model(metrics: dict) -> str:
    models = _models(metrics)
    return "fast" if "fast" in models else next(iter(models), "-")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def render(table: list[dict], width: int = WIDTH) -> str:
    """The rows as fixed-width text, every line at most `width` characters."""
    changed_w = width - NAME_W - MODEL_W - METRIC_W * len(METRICS) - 3
    header = (f"{'experiment':<{NAME_W}} {'model':<{MODEL_W}}" + "".join(f"{t:>{METRIC_W}}" for t, _, _ in METRICS)
              + f"  {'changed params':<{changed_w}}")  # fmt: skip
    lines = [header.rstrip(), "-" * min(width, len(header.rstrip()))]
    for row in table:
        model = row["model"] + (f" +{row['more']}" if row["more"] else "")
        cells = "".join(f"{'-' if v is None else f'{v:.4f}':>{METRIC_W}}" for v in row["metrics"])
        changed = ", ".join(f"{k.removeprefix('models.')}={_value(v)}" for k, v in row["changed"].items())
        changed = changed or ("(baseline)" if row.get("baseline") else "none")
        name, model = _cut(row["name"], NAME_W), _cut(model, MODEL_W)
        lines.append(f"{name:<{NAME_W}} {model:<{MODEL_W}}{cells}  {_cut(changed, changed_w)}".rstrip())
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m realfake.pipeline.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository (default: here)")
    parser.add_argument("--all", action="store_true", help="experiments of every commit, not only HEAD's")
    parser.add_argument("--model", help="show this model's metrics in every row")
    parser.add_argument("--json", dest="json_file", type=Path, help="read this `dvc exp show --json` output instead")
    args = parser.parse_args(argv)
    try:
        shown = json.loads(args.json_file.read_text()) if args.json_file else show(args.root, all_commits=args.all)
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render(rows(shown, model=args.model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
