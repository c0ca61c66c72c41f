"""Record spooled instances that the job store lost, at start-up.

The SCP returns Success once an instance's file is synced into the spool and
its record is committed. That commit is not synced to disk (see
:class:`~hipfuse.node.jobstore.JobStore` ``durable_commits``), so after a
power loss the spool can hold acknowledged files whose records were lost.
Each such file is parsed again and recorded as if it had just arrived: its
study is received, re-opened or analysed again as its state requires.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import structlog

from hipfuse.node.header import HeaderError, read_header
from hipfuse.node.jobstore import InstanceRecord, JobStore
from hipfuse.node.series import is_node_output
from hipfuse.node.spool import InstanceUIDs, InvalidUIDError, Spool

log = structlog.get_logger(__name__)


def record_unrecorded_instances(spool: Spool, jobstore: JobStore) -> int:
    """Record every spooled file whose SOP Instance UID the job store does not know.

    Files are named by their SOP Instance UID, so the comparison does not
    depend on how ``data_dir`` was written. A file that cannot be parsed, or
    that lies where its UIDs would not put it, is left in place and logged.
    The calling AE title comes from the file's Source Application Entity
    Title, the time from the file's modification time; the peer address is
    unknown. Returns how many files were recorded.
    """
    recorded = jobstore.recorded_sop_instance_uids()
    count = 0
    for path in sorted(spool.root.glob("*/*/*.dcm")):
        if path.stem in recorded:
            continue
        record = _record_for(spool, path)
        if record is None:
            continue
        # Not refused for size: the instance was acknowledged already.
        jobstore.record_instance(record)
        count += 1
        log.warning(
            "spooled_instance_recovered",
            study_instance_uid=record.study_instance_uid,
            series_instance_uid=record.series_instance_uid,
            sop_instance_uid=record.sop_instance_uid,
        )
    return count


def _record_for(spool: Spool, path: Path) -> InstanceRecord | None:
    try:
        data = path.read_bytes()
        header = read_header(data)
        uids = InstanceUIDs.validated(
            header.get("StudyInstanceUID"),
            header.get("SeriesInstanceUID"),
            header.get("SOPInstanceUID"),
        )
        meta = pydicom.filereader.read_file_meta_info(path)
        received_at = path.stat().st_mtime
    except (OSError, HeaderError, InvalidUIDError, pydicom.errors.InvalidDicomError) as error:
        log.error("spooled_instance_unreadable", path=str(path), error=str(error))
        return None
    if spool.path_for(uids) != path:
        log.error(
            "spooled_instance_misplaced",
            path=str(path),
            sop_instance_uid=uids.sop_instance_uid,
        )
        return None
    return InstanceRecord(
        sop_instance_uid=uids.sop_instance_uid,
        sop_class_uid=str(header.get("SOPClassUID", "")),
        study_instance_uid=uids.study_instance_uid,
        series_instance_uid=uids.series_instance_uid,
        path=path,
        size_bytes=len(data),
        transfer_syntax_uid=str(meta.get("TransferSyntaxUID", "")),
        received_at=received_at,
        calling_ae_title=str(meta.get("SourceApplicationEntityTitle", "")).strip(),
        peer_address="",
        header=header.attributes,
        is_node_output=is_node_output(header.attributes),
    )
