"""Admin commands against a running node: resend the real SR, export the audit trail.

The node runs in-process with the random-weight bundle; the analysis returns
the sample study's result computed once (see worker_helpers). The commands run
as separate processes, as an admin would run them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pydicom
import pytest
from admin_helpers import recording_pacs
from ingest_helpers import STORESCU, free_port, storescu
from worker_helpers import node_settings, sample_result, sample_study, untrained_bundle_dir

import hipfuse.inference.pipeline
from hipfuse.node.service import NodeService
from hipfuse.node.states import StudyState

pytestmark = pytest.mark.skipif(
    not Path(STORESCU).exists(), reason="DCMTK storescu (Debian package dcmtk) is not installed"
)
NODE_CLI = [sys.executable, "-m", "hipfuse.node.cli"]
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def wait_until(condition, timeout_s: float) -> bool:
    """Poll ``condition`` every 0.1 s until it is true or ``timeout_s`` passes."""
    waiter = threading.Event()
    for _ in range(int(timeout_s * 10)):
        if condition():
            return True
        waiter.wait(0.1)
    return condition()


def test_resend_and_audit_on_running_node(tmp_path: Path, monkeypatch) -> None:
    result = sample_result()
    monkeypatch.setattr(
        hipfuse.inference.pipeline, "analyze_study", lambda bundle, inputs, gradcam=True: result
    )
    study = sample_study()
    port = free_port()
    with recording_pacs() as pacs:
        config, settings = node_settings(
            tmp_path, port=port, destinations=(("pacs", "PACS", pacs.port),), quiet_period_s=0.5
        )
        service = NodeService(settings, bundle_dir=untrained_bundle_dir(), poll_interval_s=0.05)
        service.start()
        try:
            threads = sorted(thread.name for thread in service._threads)
            assert storescu(port, *study.files).returncode == 0
            uid = study.study_instance_uid
            assert wait_until(lambda: service.jobstore.get_study(uid).state is StudyState.DONE, 60)
            first = pacs.sop_uids()

            resend = subprocess.run(
                [*NODE_CLI, "resend", uid, "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert resend.returncode == 0, resend.stderr
            received = pacs.wait_for(2 * len(first), timeout_s=60)
            assert wait_until(lambda: service.jobstore.get_study(uid).state is StudyState.DONE, 30)

            export = subprocess.run(
                [*NODE_CLI, "audit", "export", "--config", str(config), "--format", "jsonl"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            assert service.stop() is True

    assert "hipfuse-housekeeping" in threads
    sr_uids = [sop for sop, sop_class, _ in pacs.received if sop_class == COMPREHENSIVE_3D_SR]
    assert len(sr_uids) == 2
    assert sr_uids[0] == sr_uids[1]
    assert received == first + first
    outbox_sr = settings.storage.data_dir / "outbox" / uid / f"{sr_uids[0]}.dcm"
    assert pydicom.dcmread(outbox_sr, stop_before_pixels=True).SOPInstanceUID == sr_uids[0]

    assert export.returncode == 0, export.stderr
    rows = [json.loads(line) for line in export.stdout.splitlines()]
    types = [row["event_type"] for row in rows]
    accepted = [row for row in rows if row["event_type"] == "association_accepted"]
    assert {(row["calling_ae_title"], row["called_ae_title"]) for row in accepted} == {
        ("STORESCU", "HIPFUSE")
    }
    [received_row] = [row for row in rows if row["event_type"] == "study_received"]
    assert received_row["study_instance_uid"] == uid
    assert received_row["detail"]["instances"] == len(study.files)
    [analysed] = [row for row in rows if row["event_type"] == "study_analysed"]
    assert analysed["sop_instance_uids"] == first
    sent = [row["sop_instance_uids"][0] for row in rows if row["event_type"] == "result_sent"]
    assert sorted(sent) == sorted(first + first)
    [resend_row] = [row for row in rows if row["event_type"] == "resend_requested"]
    assert resend_row["sop_instance_uids"] == first
    assert types.index("resend_requested") < len(types) - len(first)
