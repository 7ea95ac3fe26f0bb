"""Stage `check_params`: validate all of params.yaml, whatever changed in it.

It tracks the whole file, so an override no other stage tracks (`dvc exp run -S +trian.epochs=3`, a typo for
`train`) re-runs this stage, which then fails with the unknown key, instead of DVC finding every stage up to date and
the experiment ending with nothing changed. Every other stage depends on its output, so a targeted run
(`dvc exp run train@fast -S ...`) runs it first too. That output is the same text for every valid params.yaml, so
this stage re-running re-runs nothing downstream.
"""

import logging

from realfake.fileio import atomic_path
from realfake.params import load_params
from realfake.pipeline import stage


def main(paths, args) -> None:
    params = load_params(args.params)  # every section and every models.<name>
    logging.getLogger("realfake").info("%s: %d model sections, all valid", args.params, len(params.models))
    with atomic_path(paths.reports / "params_check.txt") as tmp:
        tmp.write_text("params.yaml: every section and key valid\n")


if __name__ == "__main__":
    stage.run(main, description=__doc__, script=__file__)
