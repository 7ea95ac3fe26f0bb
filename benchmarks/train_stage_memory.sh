#!/usr/bin/env bash
# Benchmark: wall time and peak RSS of the real `train@cnn` stage at the reference study's sample size on a local archive.
#
#     bash benchmarks/train_stage_memory.sh [ARCHIVE] [EPOCHS] [PER_CLASS]
#     (defaults: data/cifake.zip, 1 epoch, 25000 images per class as in the reference study)
#
# Runs in a throw-away git worktree of HEAD (its own DVC cache and MLflow store), so the project is untouched:
# `dvc repro prepare` first, then `dvc repro -s train@cnn` under /usr/bin/time -v, whose "Maximum resident set
# size" is the largest single process of the tree (the stage's Python process). Prints that, the wall time and
# the stage's own metrics/train/cnn.json.
set -euo pipefail
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
archive=$(realpath "${1:-$repo/data/cifake.zip}")
epochs=${2:-1}
per_class=${3:-25000}
work=$(mktemp -d)
git -C "$repo" worktree add --detach "$work" HEAD >/dev/null
trap 'git -C "$repo" worktree remove --force "$work"; rm -rf "$work"' EXIT
cd "$work"
export PATH="$repo/.venv/bin:$PATH" MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db"
python - "$archive" "$epochs" "$per_class" <<'PY'
import sys
from dvc.utils.serialize import modify_yaml
with modify_yaml("params.yaml") as params:
    params["data"].update(source="archive", archive=sys.argv[1])
    params["prepare"]["per_class"] = int(sys.argv[3])
    params["models"]["cnn"]["epochs"] = int(sys.argv[2])
PY
dvc repro prepare >/dev/null
/usr/bin/time -v dvc repro -s train@cnn > train.log 2> time.txt || { tail -40 train.log time.txt; exit 1; }
echo "machine: $(nproc) cores, $(python -c 'import platform; print(platform.processor() or platform.machine())'), commit $(git rev-parse --short HEAD)"
echo "archive: $archive; prepare.per_class=$per_class; models.cnn.epochs=$epochs"
grep -E "Maximum resident set size|Elapsed \(wall clock\)" time.txt
python -c "import json; m = json.load(open('metrics/train/cnn.json')); print(json.dumps({k: m[k] for k in ('train_images', 'epochs_run', 'train_seconds', 'train_images_per_s') if k in m}))"
