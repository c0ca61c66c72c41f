"""The analysis worker on the sample study: outbox items, redo after a crash, failures.

The model bundle has random weights (see worker_helpers): these tests check
the plumbing, not the probabilities. Most tests reuse one real analysis of the
sample study instead of running the model again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
import structlog
from pydicom.uid import Comprehensive3DSRStorage
from worker_helpers import (
    CompleteStudy,
    complete_sample_study,
    ingest,
    loaded_bundle,
    sample_result,
)

from hipfuse.inference.types import InputError
from hipfuse.node.outbox import result_uid
from hipfuse.node.states import JobKind, JobState, SkipReason, StudyState
from hipfuse.node.study_inputs import select_study_inputs
from hipfuse.node.worker import AnalysisWorker

SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


Node = CompleteStudy


@pytest.fixture
def node(tmp_path: Path):
    node = complete_sample_study(tmp_path / "data")
    assert node.jobstore.get_study(node.uid).state is StudyState.COMPLETE
    yield node
    node.jobstore.close()


def make_worker(node: Node, analyze=None, destinations=("pacs", "archive")) -> AnalysisWorker:
    return AnalysisWorker(
        node.jobstore,
        node.outbox,
        analyze=analyze or (lambda inputs: sample_result()),
        bundle_config=loaded_bundle().config,
        destinations=destinations,
        clock=node.clock,
    )


def test_worker_queues_results_per_destination(node: Node) -> None:
    outcome = make_worker(node).run_once()

    assert outcome is not None
    assert outcome.state is StudyState.SENDING
    # One SR and, per hip, the radiograph and three CT planes.
    assert len(outcome.objects) == 9
    items = node.jobstore.list_outbox(study_uid=node.uid)
    assert len(items) == 18
    assert {item.destination for item in items} == {"pacs", "archive"}
    assert all(item.state is JobState.PENDING for item in items)

    classes = [pydicom.dcmread(obj.path).SOPClassUID for obj in outcome.objects]
    assert sum(uid.startswith(SR_CLASS_PREFIX) for uid in classes) == 1
    assert classes.count(SC_CLASS) == 8
    assert all(obj.path.parent == node.outbox.study_dir(node.uid) for obj in outcome.objects)


def test_worker_sr_uid_fixed_by_inputs_and_bundle(node: Node) -> None:
    outcome = make_worker(node).run_once()

    study = node.jobstore.get_study(node.uid)
    checksum = loaded_bundle().config.weights_sha256
    sr = pydicom.dcmread(outcome.objects[0].path)
    assert sr.SOPInstanceUID == result_uid("sr", study.analysed_fingerprint, checksum)
    assert sr.StudyInstanceUID == node.uid
    assert sr.file_meta.MediaStorageSOPInstanceUID == sr.SOPInstanceUID


def test_worker_redo_after_crash_sends_same_uids(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args, **kwargs):
        raise SystemExit("power cut before the outbox commit")

    with monkeypatch.context() as patch:
        patch.setattr(node.jobstore, "record_results", crash)
        with pytest.raises(SystemExit):
            make_worker(node).run_once()
    assert node.jobstore.get_study(node.uid).state is StudyState.ANALYSING
    first_files = sorted(path.name for path in node.outbox.study_dir(node.uid).glob("*.dcm"))
    # The SR was queued for both destinations before the Secondary Captures were made.
    early = node.jobstore.list_outbox(study_uid=node.uid)
    assert [item.sop_class_uid for item in early] == [Comprehensive3DSRStorage] * 2

    # Start-up of the next process.
    assert node.jobstore.recover_interrupted() == [node.uid]
    assert node.jobstore.fail_interrupted_jobs(JobKind.ANALYSE, "interrupted") == 1
    outcome = make_worker(node).run_once()

    assert outcome.state is StudyState.SENDING
    assert sorted(obj.path.name for obj in outcome.objects) == first_files
    items = node.jobstore.list_outbox(study_uid=node.uid)
    assert len(items) == 18
    assert len({(item.sop_instance_uid, item.destination) for item in items}) == 18
    assert [item.job_id for item in items[:2]] == [item.job_id for item in early]
    analyses = node.jobstore.list_jobs(node.uid)
    assert [job.state for job in analyses if job.kind == JobKind.ANALYSE] == [
        JobState.FAILED,
        JobState.SUCCEEDED,
    ]


def test_worker_queues_sr_before_encoding_captures(node: Node) -> None:
    worker = make_worker(node)
    encode_captures = worker.encode_captures
    queued_meanwhile = []

    def spy(*args):
        queued_meanwhile.extend(node.jobstore.list_outbox(study_uid=node.uid))
        return encode_captures(*args)

    worker.encode_captures = spy
    outcome = worker.run_once()

    assert [item.sop_class_uid for item in queued_meanwhile] == [Comprehensive3DSRStorage] * 2
    assert {item.destination for item in queued_meanwhile} == {"pacs", "archive"}
    assert outcome.state is StudyState.SENDING
    assert len(node.jobstore.list_outbox(study_uid=node.uid)) == 18


def test_worker_skips_analysed_inputs(node: Node) -> None:
    make_worker(node).run_once()
    for state in (StudyState.DONE, StudyState.RECEIVING, StudyState.COMPLETE):
        node.jobstore.transition(node.uid, state)
    calls = []

    outcome = make_worker(node, analyze=calls.append).run_once()

    assert outcome.state is StudyState.SKIPPED
    assert outcome.reason == SkipReason.ALREADY_ANALYSED
    assert calls == []
    assert len(node.jobstore.list_outbox(study_uid=node.uid)) == 18


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (InputError("hip_not_found", "no hip was found"), "hip_not_found", "no hip was found"),
        (RuntimeError("CUDA out of memory"), "analysis_error", "RuntimeError: CUDA out of memory"),
    ],
    ids=["input-error", "unexpected-error"],
)
def test_worker_failure_recorded_with_reason(
    node: Node, error: Exception, code: str, message: str
) -> None:
    def analyze(inputs):
        raise error

    outcome = make_worker(node, analyze=analyze).run_once()

    study = node.jobstore.get_study(node.uid)
    assert outcome.state is StudyState.FAILED
    assert study.state is StudyState.FAILED
    assert study.state_reason == code
    failed = [e for e in node.jobstore.list_events(node.uid) if e.event == "study_failed"]
    assert failed[-1].details["message"] == message
    job = node.jobstore.list_jobs(node.uid)[-1]
    assert job.state is JobState.FAILED
    assert job.last_error == f"{code}: {message}"
    assert node.jobstore.list_outbox(study_uid=node.uid) == []


def test_worker_outbox_write_failure(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(study_uid, datasets):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(node.outbox, "write", full_disk)

    outcome = make_worker(node).run_once()

    study = node.jobstore.get_study(node.uid)
    assert outcome.state is StudyState.FAILED
    assert study.state_reason == "outbox_write_failed"
    job = node.jobstore.list_jobs(node.uid)[-1]
    assert "No space left on device; free disk space" in job.last_error


def test_worker_reassembles_when_inputs_changed(node: Node) -> None:
    study = node.jobstore.claim_next(StudyState.COMPLETE, StudyState.ANALYSING)
    # A further radiograph of the same series arrives while the study is claimed.
    extra = pydicom.dcmread(node.study.radiograph)
    extra.SOPInstanceUID = pydicom.uid.generate_uid()
    extra.file_meta.MediaStorageSOPInstanceUID = extra.SOPInstanceUID
    extra_path = node.outbox.root.parent / "extra.dcm"
    extra.save_as(extra_path, enforce_file_format=True)
    ingest(node.jobstore, node.spool, [extra_path], node.clock.now)

    outcome = make_worker(node).process(study)

    assert outcome.state is StudyState.SKIPPED
    assert outcome.reason == SkipReason.INPUTS_CHANGED
    # The instance that arrived meanwhile re-opens the study for assembly.
    assert node.jobstore.get_study(node.uid).state is StudyState.RECEIVING


def test_worker_reads_inputs_from_spool(node: Node) -> None:
    received = []

    def analyze(inputs):
        received.append(inputs)
        return sample_result()

    make_worker(node, analyze=analyze).run_once()

    inputs = received[0]
    selected = select_study_inputs(node.jobstore, node.uid)
    assert inputs.radiograph.instance.sop_instance_uid == selected.radiograph.sop_instance_uid
    assert len(selected.ct_slices) == len(node.study.ct_slices)
    assert inputs.ct.voxels.shape[0] == len(node.study.ct_slices)
    assert all(node.spool.root in instance.path.parents for instance in selected.instances)


def test_worker_ignores_own_outputs(node: Node) -> None:
    outcome = make_worker(node).run_once()
    before = select_study_inputs(node.jobstore, node.uid).fingerprint
    node.jobstore.transition(node.uid, StudyState.DONE)

    # PACS sends the node's SR and Secondary Captures back.
    ingest(node.jobstore, node.spool, [obj.path for obj in outcome.objects], node.clock.now)

    assert node.jobstore.get_study(node.uid).state is StudyState.DONE
    assert select_study_inputs(node.jobstore, node.uid).fingerprint == before


def test_worker_logs_ids_not_patient(node: Node) -> None:
    with structlog.testing.capture_logs() as logs:
        make_worker(node).run_once()

    events = {entry["event"]: entry for entry in logs}
    assert events["analysis_started"]["study_instance_uid"] == node.uid
    finished = events["analysis_finished"]
    assert finished["job_id"] == events["analysis_started"]["job_id"]
    assert finished["duration_s"] > 0
    assert finished["objects"] == 9
    header = pydicom.dcmread(node.study.radiograph, stop_before_pixels=True)
    text = json.dumps(logs, default=str)
    assert str(header.PatientName) not in text
    assert str(header.PatientID) not in text


def test_encodingencoder_warning_meaning_withholds_the_name() -> None:
    import warnings

    from highdicom.valuerep import check_person_name

    from hipfuse.node.worker import encoder_warning_meaning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_person_name("Zhangsan")
    (warning,) = caught

    meaning = encoder_warning_meaning(str(warning.message))

    assert meaning.startswith("a person name copied from the source images")
    assert "Zhangsan" not in meaning
    assert encoder_warning_meaning("Doe^Jane has an odd value").startswith("not recognised")
