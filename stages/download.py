"""Stage `download`: bring CIFAKE into the project, verify it, and store it decoded as one compact array file."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's library, also inside `dvc exp run --temp` copies

from realfake import cifake, sources, stage, tracking  # noqa: E402
from realfake.fileio import save_arrays, write_json  # noqa: E402
from realfake.params import load_params  # noqa: E402


def fetch_entries(data, paths) -> tuple[list[cifake.Entry], dict]:
    """Read every image of the chosen source into memory, with a description of where it came from."""
    if data.source == "kaggle":
        folder = sources.fetch_kaggle(data.kaggle_dataset)
        entries = cifake.read_folder(folder)
        return entries, {"source": "kaggle", "dataset": data.kaggle_dataset}
    archive = sources.fetch_archive(data.archive, cache_dir=paths.download_cache, sha256=data.archive_sha256)
    origin = {"source": "archive", "archive": data.archive, "sha256": sources.sha256_of(archive)}
    return cifake.read_zip(archive), origin | {"archive_bytes": archive.stat().st_size}


def main(paths, args) -> None:
    params = load_params(args.params, sections=["base", "data"])
    section = {"data": params.raw["data"]}
    with tracking.stage_run("download", repo_root=paths.root, experiment=params.base.mlflow_experiment, params=section):
        entries, origin = fetch_entries(params.data, paths)
        raw = cifake.decode_entries(entries)
        summary = origin | cifake.summarize(raw)
        summary["bytes"] = {"jpeg": sum(e.size for e in entries), "decoded": int(raw.images.nbytes)}
        save_arrays(paths.raw_dataset, **raw.arrays())
        write_json(paths.metrics / "data.json", summary)
        tracking.log_metrics(summary)
        tracking.log_artifacts(paths.metrics / "data.json")


if __name__ == "__main__":
    stage.run(main, description=__doc__, root=ROOT)
