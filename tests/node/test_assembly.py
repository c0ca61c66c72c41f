from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from ingest_helpers import XRAY_SAMPLES, ct_dataset, instance_record
from pydicom.uid import generate_uid

from hipfuse.config.settings import StudySettings
from hipfuse.node.assembly import StudyAssembler
from hipfuse.node.header import read_header
from hipfuse.node.jobstore import JobStore, input_fingerprint
from hipfuse.node.series import InputRole
from hipfuse.node.states import StudyState

STUDY = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    with JobStore.in_data_dir(tmp_path) as opened:
        yield opened


def _ct_header(series: str, index: int, **kwargs: Any) -> dict[str, Any]:
    buffer = BytesIO()
    ct_dataset(STUDY, series, index, **kwargs).save_as(buffer, enforce_file_format=True)
    return read_header(buffer.getvalue()).attributes


def _add_ct(store: JobStore, count: int, at: float, **kwargs: Any) -> str:
    series = generate_uid()
    for index in range(count):
        header = _ct_header(series, index, **kwargs)
        store.record_instance(
            instance_record(
                header["SOPInstanceUID"],
                study=STUDY,
                series=series,
                received_at=at + index,
                header=header,
            )
        )
    return series


def _add_radiograph(store: JobStore, at: float) -> str:
    header = read_header(XRAY_SAMPLES[0].read_bytes()).attributes
    series = generate_uid()
    store.record_instance(
        instance_record(
            header["SOPInstanceUID"], study=STUDY, series=series, received_at=at, header=header
        )
    )
    return series


def _add_other(store: JobStore, at: float) -> None:
    header = {"Modality": "SR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.34"}
    store.record_instance(
        instance_record("1.2.9.9", study=STUDY, series="1.2.9", received_at=at, header=header)
    )


def test_study_waits_for_quiet_period(store: JobStore) -> None:
    _add_ct(store, 4, at=1000.0)  # last instance at 1003
    assembler = StudyAssembler(store, StudySettings(quiet_period_s=30.0))
    assert assembler.run_once(now=1032.9) == []
    assert store.get_study(STUDY).state is StudyState.RECEIVING
    [outcome] = assembler.run_once(now=1033.0)
    assert outcome.state is StudyState.COMPLETE
    assert store.get_study(STUDY).state is StudyState.COMPLETE


def test_complete_study_records_inputs_and_fingerprint(store: JobStore) -> None:
    radiograph = _add_radiograph(store, at=1000.0)
    ct = _add_ct(store, 4, at=1001.0)
    _add_other(store, at=1002.0)
    [outcome] = StudyAssembler(store, StudySettings(quiet_period_s=10.0)).run_once(now=2000.0)
    assert outcome.inputs == {InputRole.RADIOGRAPH: radiograph, InputRole.CT: ct}
    sops = [
        instance.sop_instance_uid
        for instance in store.list_instances(STUDY)
        if instance.series_instance_uid in (radiograph, ct)
    ]
    assert outcome.fingerprint == input_fingerprint(sops)
    study = store.get_study(STUDY)
    assert study.input_fingerprint == outcome.fingerprint
    roles = {series.series_instance_uid: series.input_role for series in store.list_series(STUDY)}
    assert roles == {radiograph: "radiograph", ct: "ct", "1.2.9": None}
    classes = {s.series_instance_uid: s.classification for s in store.list_series(STUDY)}
    assert classes["1.2.9"] == "other_modality"
    warnings = {s.series_instance_uid: s.warnings for s in store.list_series(STUDY)}
    assert warnings[radiograph] == ["no_body_part"]


def test_study_without_hip_images_skipped(store: JobStore) -> None:
    _add_other(store, at=1000.0)
    _add_ct(store, 2, at=1000.0)
    [outcome] = StudyAssembler(store, StudySettings(quiet_period_s=10.0)).run_once(now=2000.0)
    assert outcome.state is StudyState.SKIPPED
    study = store.get_study(STUDY)
    assert study.state is StudyState.SKIPPED
    assert study.state_reason == "no_hip_images"


def test_resent_study_not_analysed_twice(store: JobStore) -> None:
    _add_ct(store, 4, at=1000.0)
    assembler = StudyAssembler(store, StudySettings(quiet_period_s=10.0))
    assembler.run_once(now=2000.0)
    for state in (StudyState.ANALYSING, StudyState.ANALYSED, StudyState.ENCODING):
        store.transition(STUDY, state)
    store.transition(STUDY, StudyState.SENDING)
    store.transition(STUDY, StudyState.DONE)

    # The same instances arrive again: the study re-opens, then is skipped.
    for instance in store.list_instances(STUDY):
        store.record_instance(
            instance_record(
                instance.sop_instance_uid,
                study=STUDY,
                series=instance.series_instance_uid,
                received_at=3000.0,
                header=instance.header,
            )
        )
    assert store.get_study(STUDY).state is StudyState.RECEIVING
    [outcome] = assembler.run_once(now=4000.0)
    assert outcome.state is StudyState.SKIPPED
    assert store.get_study(STUDY).state_reason == "already_analysed"


def test_new_input_after_analysis_is_analysed_again(store: JobStore) -> None:
    _add_ct(store, 4, at=1000.0)
    assembler = StudyAssembler(store, StudySettings(quiet_period_s=10.0))
    assembler.run_once(now=2000.0)
    store.transition(STUDY, StudyState.ANALYSING)
    store.transition(STUDY, StudyState.ANALYSED)
    store.transition(STUDY, StudyState.FAILED, reason="send_failed")
    _add_radiograph(store, at=3000.0)
    [outcome] = assembler.run_once(now=4000.0)
    assert outcome.state is StudyState.COMPLETE
    assert set(outcome.inputs) == {InputRole.RADIOGRAPH, InputRole.CT}


@pytest.mark.parametrize(
    ("images_in_acquisition", "with_radiograph", "early"),
    [(4, True, True), (6, True, False), (None, True, False), (4, False, False)],
    ids=["all-slices", "slices-missing", "count-unknown", "no-radiograph"],
)
def test_early_completion(
    store: JobStore, images_in_acquisition: int | None, with_radiograph: bool, early: bool
) -> None:
    if with_radiograph:
        _add_radiograph(store, at=1000.0)
    series = generate_uid()
    for index in range(4):
        dataset = ct_dataset(STUDY, series, index)
        if images_in_acquisition is not None:
            dataset.ImagesInAcquisition = images_in_acquisition
        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        header = read_header(buffer.getvalue()).attributes
        store.record_instance(
            instance_record(
                dataset.SOPInstanceUID, study=STUDY, series=series, received_at=1000.0,
                header=header,
            )
        )  # fmt: skip
    settings = StudySettings(quiet_period_s=30.0, complete_when_expected_series_present=True)
    outcomes = StudyAssembler(store, settings).run_once(now=1001.0)
    assert bool(outcomes) is early
    if early:
        assert outcomes[0].early
        assert store.get_study(STUDY).state is StudyState.COMPLETE


def test_run_uses_injected_clock(store: JobStore) -> None:
    _add_ct(store, 4, at=1000.0)
    now = [1010.0]
    assembler = StudyAssembler(store, StudySettings(quiet_period_s=30.0), clock=lambda: now[0])
    assert assembler.run_once() == []
    now[0] = 1040.0
    assert [outcome.state for outcome in assembler.run_once()] == [StudyState.COMPLETE]
