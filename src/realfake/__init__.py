"""realfake: tell real photos from AI-generated images (CIFAKE), as a reproducible DVC + MLflow pipeline.

`import realfake` registers the custom Keras layers that realfake's saved models use, so
`keras.models.load_model(path)` works after it; `realfake.load_model(path)` does the same in one call.
The registration waits until something imports Keras (a post-import hook): importing realfake alone costs neither
TensorFlow's start-up time nor its memory, which the data stages and `realfake --help` do not need.
TensorFlow, when something imports it after realfake, starts quietly (`quiet_tensorflow`).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import wrapt

try:
    __version__ = version("realfake")
except PackageNotFoundError:  # running from a source checkout that is not installed
    __version__ = "0+unknown"


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what C++ libraries write straight to file descriptor 2 (TensorFlow's CUDA probing, printed before
    its log level applies), unless REALFAKE_NATIVE_LOGS=1. Python's own errors are raised after it is restored."""
    if os.environ.get("REALFAKE_NATIVE_LOGS") == "1":
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Imports TensorFlow, whenever something first does, with file descriptor 2 silenced (`quiet_native_stderr`) and
    its devices probed in that silence: its C++ start-up lines (oneDNN and CPU-feature notices, absl's "before
    InitializeLog" warning, a `cuInit` error on machines without a GPU) come before its log level applies.
    REALFAKE_NATIVE_LOGS=1 shows the lines."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; find_spec below must not come back here
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec(module):
            with quiet_native_stderr():
                exec_module(module)
                with contextlib.suppress(Exception):  # the GPU probe (cuInit) happens here, silenced, not later
                    module.config.list_physical_devices()

        spec.loader.exec_module = quiet_exec
        return spec


def quiet_tensorflow() -> None:
    """Set up the quiet TensorFlow start (see `_QuietTensorFlowImport`); a no-op once TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's info and warning lines would bury realfake's own
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowImport())


def _register_layers(keras_module) -> None:
    import realfake.models.layers  # noqa: F401  (its decorators register the layers with Keras)


quiet_tensorflow()
wrapt.register_post_import_hook(_register_layers, "keras")  # runs at once when Keras is already imported


def load_model(path: str | Path):
    """Load a model saved by realfake (`models/<name>.keras`) in Keras' safe mode, uncompiled.

    Keras alone (`keras.models.load_model`) needs `import realfake` first, or it cannot find realfake's layers
    (TTAViews, Calibration, ...).
    """
    from realfake.models.saving import load_model as load

    return load(Path(path), rebuild_with="dvc repro")
