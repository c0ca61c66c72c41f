"""Settings of the DICOM drop folder (``[dropfolder]``), for sites that export studies to disk."""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from hipfuse.config.fields import PositiveSeconds, Section, SettingsKeyError


class DropFolderSettings(Section):
    """Folder watched for DICOM files that are stored as if received by C-STORE."""

    enabled: bool = False
    dir: Path | None = None
    settle_s: PositiveSeconds = 5.0
    poll_interval_s: PositiveSeconds = 10.0

    @model_validator(mode="after")
    def _check_dir(self) -> DropFolderSettings:
        if self.enabled and self.dir is None:
            raise SettingsKeyError(
                "dir", "is required with enabled = true: set the folder the exports are written to"
            )
        return self
