"""Every path of the pipeline, anchored at a repository root that the caller passes in."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

STATE_DIR_ENV = "REALFAKE_STATE_DIR"


@dataclasses.dataclass(frozen=True)
class ProjectPaths:
    root: Path

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def raw_dataset(self) -> Path:
        return self.root / "data" / "raw" / "cifake.npz"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    def prepared_split(self, split: str) -> Path:
        return self.prepared / f"{split}.npz"

    @property
    def generated(self) -> Path:
        return self.root / "data" / "generated"

    def generated_split(self, split: str) -> Path:
        """DCGAN images of one split (`train` or `test`), decoded from their stored JPEGs: `images` uint8."""
        return self.generated / f"{split}.npz"

    @property
    def generated_jpegs(self) -> Path:
        """The DCGAN images as stored JPEG files (train/DCGAN/*.jpg, test/DCGAN/*.jpg) in one zip."""
        return self.generated / "dcgan_jpeg.zip"

    def model_file(self, name: str) -> Path:
        return self.models / f"{name}.keras"

    @property
    def download_cache(self) -> Path:
        """Downloaded archives; outside DVC's outputs so a failed or repeated stage does not fetch them again."""
        return self.root / ".cache" / "downloads"

    @property
    def state(self) -> Path:
        """Resumable training state; outside DVC's outputs, which DVC deletes before it runs a stage.

        REALFAKE_STATE_DIR moves it: `dvc exp run --temp` runs each experiment in a new copy of the repository, so
        the recipe runner points every copy at the workspace's state, where a rerun after an interruption finds it.
        """
        return Path(os.environ.get(STATE_DIR_ENV) or self.root / ".cache" / "state")

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def reports(self) -> Path:
        return self.root / "reports"
