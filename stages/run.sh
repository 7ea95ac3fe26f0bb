#!/bin/sh
# Runs one stage script with the project's Python, whichever `dvc` started it:
#   sh stages/run.sh train --model cnn   ->   <python> stages/train.py --model cnn
# The interpreter is $REALFAKE_PYTHON when set, else the main repository's .venv (DVC_ROOT points at it, also from
# the temporary copies of `dvc exp run --temp` and `--queue`), else this checkout's .venv, else python3.
# This checkout's src/ comes first on the import path, so an experiment's copy runs its own library.
set -e
here=$(cd "$(dirname "$0")" && pwd)
stage=$1
shift
for candidate in "$REALFAKE_PYTHON" "${DVC_ROOT:+$DVC_ROOT/.venv/bin/python}" "$here/../.venv/bin/python"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then python=$candidate; break; fi
done
PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}" exec "${python:-python3}" "$here/$stage.py" "$@"
