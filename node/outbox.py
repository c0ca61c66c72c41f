"""Result files waiting to be sent: ``data_dir/outbox/<study>/<sop>.dcm``.

The analysis worker writes each SR and Secondary Capture here (temporary file,
fsync, rename, folder fsync) before the job store records it as an outbox
item, so an item in the job store always has its complete file. The SOP
Instance UIDs of the results are derived from the analysed inputs and the
model bundle (:func:`result_uid`): analysing the same inputs again after a
crash writes the same file names and sends the same UIDs, so a destination
never gets a second SR for one analysis.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import structlog
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from hipfuse.node.durable_files import fsync_dir, remove_temp_files, write_file_durably
from hipfuse.node.jobstore import ResultObject
from hipfuse.node.spool import validate_uid

log = structlog.get_logger(__name__)

OUTBOX_DIR_NAME = "outbox"


def result_uid(role: str, input_fingerprint: str, bundle_checksum: str, *parts: str) -> str:
    """Return a UID fixed by the analysed inputs, the bundle and the object's role.

    Parameters
    ----------
    role
        What the UID names, for example ``sr-series`` or ``sr``.
    input_fingerprint
        The study's input fingerprint (sha256 of the input SOP Instance UIDs).
    bundle_checksum
        SHA-256 of the bundle's weights.
    parts
        Further distinguishing values, such as the hip and image index of a
        Secondary Capture.
    """
    # generate_uid hashes the sources with SHA-512 under pydicom's UID root.
    return generate_uid(entropy_srcs=["hipfuse", role, input_fingerprint, bundle_checksum, *parts])


class OutboxFolder:
    """The outbox folder under ``data_dir``.

    Parameters
    ----------
    data_dir
        The node's data folder (``[storage] data_dir``); the outbox is its
        ``outbox`` subfolder.
    """

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / OUTBOX_DIR_NAME

    def prepare(self) -> int:
        """Create the folder (mode 0700) and delete temporary files left by a crash.

        Returns the number of temporary files deleted.
        """
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        removed = remove_temp_files(self.root, "*")
        if removed:
            log.warning("outbox_temp_files_removed", count=removed, outbox=str(self.root))
        return removed

    def study_dir(self, study_instance_uid: str) -> Path:
        """Return the folder of one study's result files."""
        return self.root / validate_uid("StudyInstanceUID", study_instance_uid)

    def write(self, study_instance_uid: str, datasets: Sequence[Dataset]) -> list[ResultObject]:
        """Write each dataset as a Part 10 file durably; return them in the given order.

        A file of the same SOP Instance UID is replaced, which is what a redone
        analysis produces.

        Raises
        ------
        OSError
            A file could not be written; no partial file is left behind.
        """
        folder = self.study_dir(study_instance_uid)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fsync_dir(folder.parent)
        written = []
        for dataset in datasets:
            sop_uid = validate_uid("SOPInstanceUID", dataset.SOPInstanceUID)
            final = folder / f"{sop_uid}.dcm"
            write_file_durably(
                final, lambda handle, ds=dataset: ds.save_as(handle, enforce_file_format=True)
            )
            written.append(ResultObject(sop_uid, str(dataset.SOPClassUID), final))
        return written

    def remove_study(self, study_instance_uid: str) -> None:
        """Delete one study's result files (retention)."""
        shutil.rmtree(self.study_dir(study_instance_uid), ignore_errors=True)
