"""The node service in-process: receiving beside analysis, stop and restart, start errors.

The model bundle has random weights (see worker_helpers); the analysis is
replaced by a gated stand-in where a test needs to hold it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
import pytest
from ingest_helpers import STORESCU, free_port, storescu
from worker_helpers import node_settings, sample_result, sample_study, untrained_bundle_dir

import hipfuse.inference.pipeline
from hipfuse.config.settings import load_settings
from hipfuse.node.service import NodeService, ServiceError
from hipfuse.node.states import StudyState

pytestmark = pytest.mark.skipif(
    not Path(STORESCU).exists(), reason="DCMTK storescu (Debian package dcmtk) is not installed"
)


class GatedAnalysis:
    """Stands in for analyze_study: signals when called, returns once released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        # Ends the worker thread as if its process died, instead of returning.
        self.die = False

    def __call__(self, bundle, inputs, gradcam=True):
        self.started.set()
        assert self.release.wait(timeout=60)
        if self.die:
            raise SystemExit("process stopped")
        return sample_result()


def wait_for_state(service: NodeService, uid: str, state: StudyState, timeout_s: float) -> None:
    deadline = threading.Event()
    timer = threading.Timer(timeout_s, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            if service.jobstore.get_study(uid).state is state:
                return
            deadline.wait(0.1)
        raise AssertionError(
            f"study is {service.jobstore.get_study(uid).state}, not {state} after {timeout_s} s"
        )
    finally:
        timer.cancel()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> GatedAnalysis:
    sample_result()  # computed with the real analysis before it is replaced
    gated = GatedAnalysis()
    monkeypatch.setattr(hipfuse.inference.pipeline, "analyze_study", gated)
    yield gated
    gated.release.set()


def test_receiving_continues_during_analysis(tmp_path: Path, gate: GatedAnalysis) -> None:
    study = sample_study()
    port = free_port()
    _, settings = node_settings(tmp_path, port=port, destinations=(), quiet_period_s=0.5)
    service = NodeService(settings, bundle_dir=untrained_bundle_dir(), poll_interval_s=0.05)
    service.start()
    try:
        assert storescu(port, *study.files).returncode == 0
        assert gate.started.wait(timeout=30)

        # While the worker has the study claimed, another study is received.
        other = tmp_path / "other.dcm"
        radiograph = pydicom.dcmread(study.radiograph)
        radiograph.StudyInstanceUID = pydicom.uid.generate_uid()
        radiograph.SOPInstanceUID = pydicom.uid.generate_uid()
        radiograph.file_meta.MediaStorageSOPInstanceUID = radiograph.SOPInstanceUID
        radiograph.save_as(other, enforce_file_format=True)
        assert storescu(port, other).returncode == 0
        assert service.jobstore.get_study(radiograph.StudyInstanceUID).instance_count == 1
        assert service.jobstore.get_study(study.study_instance_uid).state is StudyState.ANALYSING

        gate.release.set()
        wait_for_state(service, study.study_instance_uid, StudyState.DONE, 30)
    finally:
        gate.release.set()
        assert service.stop() is True


# The first process's worker thread is ended with SystemExit on purpose.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_stop_leaves_work_for_next_start(tmp_path: Path, gate: GatedAnalysis) -> None:
    study = sample_study()
    port = free_port()
    _, settings = node_settings(tmp_path, port=port, destinations=(), quiet_period_s=0.5)
    first = NodeService(settings, bundle_dir=untrained_bundle_dir(), poll_interval_s=0.05)
    first.start()
    assert storescu(port, *study.files).returncode == 0
    assert gate.started.wait(timeout=30)
    jobstore = first.jobstore

    # The analysis outlasts the stop time-out: the study stays claimed.
    threads = list(first._threads)
    assert first.stop(timeout_s=0.2) is False
    assert jobstore.get_study(study.study_instance_uid).state is StudyState.ANALYSING
    # The process ends: the worker thread dies without recording anything.
    gate.die = True
    gate.release.set()
    for thread in threads:
        thread.join(timeout=30)
    assert jobstore.get_study(study.study_instance_uid).state is StudyState.ANALYSING
    gate.die = False

    second = NodeService(settings, bundle_dir=untrained_bundle_dir(), poll_interval_s=0.05)
    second.start()
    try:
        wait_for_state(second, study.study_instance_uid, StudyState.DONE, 30)
        events = [e.event for e in second.jobstore.list_events(study.study_instance_uid, 500)]
        assert "study_complete" in events[events.index("study_analysing") + 1 :]
    finally:
        assert second.stop() is True
        jobstore.close()


def test_start_refuses_missing_bundle(tmp_path: Path) -> None:
    _, settings = node_settings(tmp_path, port=free_port())

    with pytest.raises(ServiceError, match="cannot be loaded"):
        NodeService(settings, bundle_dir=tmp_path / "absent").start()


def test_start_refuses_empty_tls_ca_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("")
    config, _ = node_settings(tmp_path, port=free_port())
    config.write_text(
        config.read_text().replace(
            "port = 11113\n", f'port = 11113\ntls = true\ntls_ca_file = "{tmp_path / "ca.pem"}"\n'
        )
    )

    with pytest.raises(ServiceError, match=r"destinations\[0\]\.tls_ca_file: .*no PEM certificate"):
        NodeService(load_settings(config), bundle_dir=untrained_bundle_dir()).start()


def test_start_refuses_busy_port(tmp_path: Path) -> None:
    port = free_port()
    _, settings = node_settings(tmp_path, port=port, destinations=())
    first = NodeService(settings, bundle_dir=untrained_bundle_dir())
    first.start()
    try:
        (tmp_path / "other").mkdir()
        _, other = node_settings(tmp_path / "other", port=port, destinations=())
        with pytest.raises(ServiceError, match=f"cannot listen on 127.0.0.1:{port}"):
            NodeService(other, bundle_dir=untrained_bundle_dir()).start()
    finally:
        first.stop()
