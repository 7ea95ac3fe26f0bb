"""Stage `download`: bring CIFAKE into the project, verify it, and store it decoded as one compact array file.

`data.source: auto` reads the zip at `data.archive` when it is there (a relative path means the main repository's)
and downloads from Kaggle otherwise; `archive` insists on the zip, `kaggle` on the download.
"""

from realfake.data import cifake, sources
from realfake.data.summary import summarize
from realfake.errors import SourceUnavailableError
from realfake.fileio import save_arrays, write_json
from realfake.params import load_params
from realfake.pipeline import stage, tracking

OFFLINE_HINT = (
    "Offline? Put CIFAKE's Kaggle zip at data/cifake.zip (the default data.archive) and run `make repro` again, "
    "or point data.archive at a copy: dvc exp run -S data.archive=PATH"
)


def fetch_entries(data, paths) -> tuple[list[cifake.Entry], dict]:
    """Every image of the chosen source (read lazily), and a description of where it came from."""
    location = data.archive and sources.resolve_location(data.archive, stage.main_root(paths))
    local = location and sources.local_archive(location)
    if data.source == "archive" or (data.source == "auto" and (local or location.startswith(("http://", "https://")))):
        archive = sources.fetch_archive(location, cache_dir=paths.download_cache, sha256=data.archive_sha256)
        origin = {"source": "archive", "archive": sources.redact(data.archive), "sha256": sources.sha256_of(archive)}
        return cifake.read_zip(archive), origin | {"archive_bytes": archive.stat().st_size}
    try:
        folder = sources.fetch_kaggle(data.kaggle_dataset, hint=OFFLINE_HINT)
    except SourceUnavailableError as exc:
        if data.source == "auto":
            raise SourceUnavailableError(f"data.source=auto: no zip at {data.archive}, and {exc}") from exc
        raise
    return cifake.read_folder(folder), {"source": "kaggle", "dataset": data.kaggle_dataset}


def main(paths, args) -> None:
    params = load_params(args.params, sections=["base", "data"])
    section = {"data": params.raw["data"] | {"archive": params.data.archive and sources.redact(params.data.archive)}}
    with tracking.stage_run("download", repo_root=paths.root, experiment=params.base.mlflow_experiment, params=section):
        entries, origin = fetch_entries(params.data, paths)
        raw = cifake.decode_entries(entries)
        summary = origin | summarize(raw)
        summary["bytes"] = {"jpeg": sum(e.size for e in entries), "decoded": int(raw.images.nbytes)}
        save_arrays(paths.raw_dataset, **raw.arrays())
        write_json(paths.metrics / "data.json", summary)
        tracking.log_metrics(summary)
        tracking.log_artifacts(paths.metrics / "data.json")


if __name__ == "__main__":
    stage.run(main, description=__doc__, script=__file__)
