"""DVC's plots as static pictures, viewable offline: `dvc plots show` writes HTML that loads Vega from a CDN, so
without network it shows nothing. This renders each plot to a PNG with vl-convert (Vega bundled, no network) and
writes one self-contained `dvc_plots/index.html` with every picture in it.

    python -m realfake.pipeline.plot_render                      # the workspace's plots (make plots)
    python -m realfake.pipeline.plot_render HEAD fast-30min-seed42   # `dvc plots diff` of revisions or experiments
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

OUT = Path("dvc_plots")


def dvc_plots(root: Path, revisions: list[str]) -> dict:
    command = [sys.executable, "-m", "dvc", "plots", *(["diff", *revisions] if revisions else ["show"]), "--json"]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command[2:])}` failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "plot"


def render(root: Path, revisions: list[str]) -> Path:
    """Write dvc_plots/<plot>.png for every plot (images copied) and dvc_plots/index.html; return the index."""
    import vl_convert

    root = Path(root)
    out = root / OUT
    out.mkdir(exist_ok=True)
    shown = dvc_plots(root, revisions)
    sections = []
    for name, items in shown.get("data", {}).items():
        for i, item in enumerate(items):
            label = name if len(items) == 1 else f"{name} ({', '.join(item.get('revisions', [])) or i})"
            if item["type"] == "vega":
                png = vl_convert.vegalite_to_png(item["content"], scale=1.5)
            elif item["type"] == "image":
                png = Path(item["url"] if Path(item["url"]).is_absolute() else root / item["url"]).read_bytes()
            else:
                continue
            target = out / f"{_file_name(label).removesuffix('.png')}.png"
            target.write_bytes(png)
            encoded = base64.b64encode(png).decode()
            sections.append(f"<h2>{html.escape(label)}</h2>\n<img alt='{html.escape(label)}' "
                            f"src='data:image/png;base64,{encoded}'>")  # fmt: skip
    for error in shown.get("errors", []) or []:
        sections.append(f"<p>not drawn: {html.escape(json.dumps(error))}</p>")
    index = out / "index.html"
    index.write_text("<!doctype html><meta charset='utf-8'><title>realfake plots</title>\n" + "\n".join(sections))
    return index


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m realfake.pipeline.plot_render", description=__doc__.split("\n")[0])
    parser.add_argument(
        "revisions", nargs="*", help="git revisions or experiment names to compare (default: workspace)"
    )
    parser.add_argument("--root", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    try:
        print(render(args.root, args.revisions))
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
