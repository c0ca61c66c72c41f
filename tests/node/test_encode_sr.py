import copy
import math
import re
from dataclasses import replace

import pydicom
import pytest
from encode_study import build_study, bundle_config, run_tool, tool_available

from hipfuse.inference.types import HipClass, InputModality, Laterality
from hipfuse.node.encode import build_sr, codes

pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely:UserWarning")

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"

# dciodvfy warnings that the sample inputs or the private scheme cause: the sample
# radiograph has no Study Date or Study Time and a one-component Patient's Name.
ALLOWED_WARNINGS = (
    r"Unrecognized defined term <99HIPFUSE>",
    r"needed to build DICOMDIR - Study Date",
    r"needed to build DICOMDIR - Study Time",
    r"Patient's Name .* Retired Person Name form",
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return build_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def sr_path(study, tmp_path_factory):
    sr = build_sr(study.result, bundle_config("demo"), study.sources, series_number=900)
    path = tmp_path_factory.mktemp("sr") / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def sr(sr_path):
    return pydicom.dcmread(sr_path)


def _name(item) -> tuple[str, str]:
    concept = item.ConceptNameCodeSequence[0]
    return concept.CodeValue, concept.CodingSchemeDesignator


def _children(item, code) -> list:
    return [
        c
        for c in item.get("ContentSequence", [])
        if _name(c) == (code.value, code.scheme_designator)
    ]


def _code_value(item):
    value = item.ConceptCodeSequence[0]
    return value.CodeValue, value.CodingSchemeDesignator


def _key(code) -> tuple[str, str]:
    return code.value, code.scheme_designator


def _groups(sr) -> list:
    (measurements,) = _children(sr, codes.IMAGING_MEASUREMENTS)
    return list(measurements.ContentSequence)


def _laterality(group) -> tuple[str, str]:
    (site,) = [c for c in group.ContentSequence if _name(c) == ("363698007", "SCT")]
    (laterality,) = site.ContentSequence
    return _code_value(laterality)


def _probabilities(group) -> dict[tuple[str, str], float]:
    values = {}
    for item in _children(group, codes.PROBABILITY):
        (modifier,) = item.ContentSequence
        values[_code_value(modifier)] = float(item.MeasuredValueSequence[0].NumericValue)
    return values


def _comments(sr) -> list[str]:
    (evaluations,) = _children(sr, codes.QUALITATIVE_EVALUATIONS)
    return [item.TextValue for item in _children(evaluations, codes.COMMENT)]


@pytest.mark.skipif(not tool_available("dciodvfy"), reason="dicom3tools not installed")
def test_sr_passes_dciodvfy(sr_path):
    output = run_tool("dciodvfy", sr_path)
    lines = (output.stdout + output.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == []
    warnings = [line for line in lines if line.startswith("Warning")]
    unexpected = [w for w in warnings if not any(re.search(p, w) for p in ALLOWED_WARNINGS)]
    assert unexpected == []


@pytest.mark.skipif(not tool_available("dsrdump"), reason="DCMTK not installed")
def test_sr_read_by_dsrdump(sr_path):
    output = run_tool("dsrdump", "-v", "+Pt", sr_path)
    assert output.returncode == 0, output.stderr
    assert "E:" not in output.stderr
    assert "W:" not in output.stderr
    assert "Comprehensive 3D SR Document" in output.stdout
    assert output.stdout.count("# TID 1500 (DCMR)") == 1
    assert output.stdout.count("# TID 1501 (DCMR)") == 2


def test_sr_same_study_new_series(sr, study):
    source = study.radiograph_dataset
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert sr.Modality == "SR"
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PatientID == source.PatientID
    assert sr.PatientName == source.PatientName
    assert sr.StudyID == source.StudyID
    source_series = {ds.SeriesInstanceUID for ds in study.sources}
    assert sr.SeriesInstanceUID not in source_series
    assert sr.SeriesNumber == 900
    assert sr.Manufacturer == "hipfuse"
    assert sr.ManufacturerModelName == "hipfuse-demo"


def test_sr_hips_right_before_left(sr):
    lateralities = [_laterality(group) for group in _groups(sr)]
    assert lateralities == [_key(codes.RIGHT), _key(codes.LEFT)]


def test_sr_finding_is_predicted_class(sr, study):
    predicted = {hip.laterality: hip.prediction.predicted for hip in study.result.hips}
    groups = _groups(sr)
    (right_finding,) = _children(groups[0], codes.FINDING)
    (left_finding,) = _children(groups[1], codes.FINDING)
    assert _code_value(right_finding) == _key(codes.HIP_CLASS_CODES[predicted[Laterality.RIGHT]])
    assert _code_value(left_finding) == _key(codes.HIP_CLASS_CODES[predicted[Laterality.LEFT]])
    assert predicted[Laterality.RIGHT] is HipClass.NORMAL
    assert predicted[Laterality.LEFT] is HipClass.OSTEOARTHRITIS


def test_sr_finding_site_hip_joint(sr):
    for group in _groups(sr):
        (site,) = [c for c in group.ContentSequence if _name(c) == ("363698007", "SCT")]
        assert _code_value(site) == _key(codes.HIP_JOINT)


def test_sr_probabilities_match_and_sum_to_one(sr, study):
    expected = {hip.laterality: hip.prediction.probabilities for hip in study.result.hips}
    for group, side in zip(_groups(sr), (Laterality.RIGHT, Laterality.LEFT), strict=True):
        values = _probabilities(group)
        assert set(values) == {_key(c) for c in codes.HIP_CLASS_CODES.values()}
        assert math.fsum(values.values()) == pytest.approx(1.0, abs=1e-6)
        for hip_class, probability in expected[side].items():
            assert values[_key(codes.HIP_CLASS_CODES[hip_class])] == pytest.approx(
                probability, abs=1e-9
            )
            assert 0.0 <= values[_key(codes.HIP_CLASS_CODES[hip_class])] <= 1.0


def test_sr_measurements_unit_one(sr):
    for group in _groups(sr):
        nums = [c for c in group.ContentSequence if c.ValueType == "NUM"]
        assert len(nums) == len(HipClass) + len(InputModality)
        for item in nums:
            unit = item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
            assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("1", "UCUM")


def test_sr_attention_weights(sr, study):
    right = next(h for h in study.result.hips if h.laterality is Laterality.RIGHT)
    group = _groups(sr)[0]
    for modality, code in codes.ATTENTION_CODES.items():
        (item,) = _children(group, code)
        value = float(item.MeasuredValueSequence[0].NumericValue)
        assert value == pytest.approx(right.prediction.attention[modality])


def test_sr_algorithm_identification(sr):
    group = _groups(sr)[0]
    texts = {_name(c)[0]: c.TextValue for c in group.ContentSequence if c.ValueType == "TEXT"}
    assert texts["111001"] == "hipfuse-demo"  # Algorithm Name
    assert texts["111003"] == "0.1.0"  # Algorithm Version
    parameters = [c.TextValue for c in group.ContentSequence if _name(c) == ("111002", "DCM")]
    assert f"weights_sha256={'ab' * 32}" in parameters
    assert "intended_use=demo" in parameters


def test_sr_device_observer(sr):
    texts = {_name(c)[0]: c.get("TextValue") for c in sr.ContentSequence if c.ValueType == "TEXT"}
    assert texts["121014"] == "hipfuse"  # Device Observer Manufacturer
    assert texts["121015"] == "hipfuse-demo"  # Device Observer Model Name


def test_sr_evidence_lists_every_source(sr, study):
    (study_item,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert study_item.StudyInstanceUID == study.radiograph_dataset.StudyInstanceUID
    referenced = {
        instance.ReferencedSOPInstanceUID
        for series in study_item.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in study.sources}


def test_sr_group_sources_radiograph_and_ct_slice(sr, study):
    ct_uids = {ds.SOPInstanceUID for ds in study.ct_datasets}
    for group in _groups(sr):
        images = [c for c in group.ContentSequence if c.ValueType == "IMAGE"]
        uids = [c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for c in images]
        assert uids[0] == study.radiograph_dataset.SOPInstanceUID
        assert uids[1] in ct_uids


def test_sr_private_scheme_identified(sr):
    designators = [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence]
    assert "99HIPFUSE" in designators


def test_sr_clinical_text_available(sr):
    (evaluations,) = _children(sr, codes.QUALITATIVE_EVALUATIONS)
    (item,) = _children(evaluations, codes.CLINICAL_TEXT_AVAILABLE)
    assert _code_value(item) == _key(codes.YES)


def test_sr_without_text_says_no(study):
    result = replace(study.result, text=None)
    sr = build_sr(result, bundle_config("demo"), study.sources, series_number=900)
    (evaluations,) = _children(sr, codes.QUALITATIVE_EVALUATIONS)
    (item,) = _children(evaluations, codes.CLINICAL_TEXT_AVAILABLE)
    assert _code_value(item) == _key(codes.NO)


def test_sr_input_warning_comment(sr):
    assert any("pixel_spacing_placeholder" in text for text in _comments(sr))


@pytest.mark.parametrize(
    ("intended_use", "labelled"),
    [("demo", True), ("research", True), ("clinical", False)],
    ids=["demo", "research", "clinical"],
)
def test_sr_not_for_clinical_use_label(study, intended_use, labelled):
    sr = build_sr(study.result, bundle_config(intended_use), study.sources, series_number=900)
    statements = [t for t in _comments(sr) if "NOT FOR CLINICAL USE" in t]
    if labelled:
        assert sr.SeriesDescription == "hipfuse AI result - NOT FOR CLINICAL USE"
        assert len(statements) == 1
        assert intended_use in statements[0]
    else:
        assert sr.SeriesDescription == "hipfuse AI result"
        assert statements == []


def test_sr_given_uids_kept(study):
    sr = build_sr(
        study.result,
        bundle_config(),
        study.sources,
        series_number=7,
        instance_number=3,
        series_instance_uid="1.2.3.4",
        sop_instance_uid="1.2.3.4.5",
    )
    assert (sr.SeriesInstanceUID, sr.SOPInstanceUID, sr.InstanceNumber) == (
        "1.2.3.4",
        "1.2.3.4.5",
        3,
    )


def _with(ds, **attributes):
    changed = copy.deepcopy(ds)
    for keyword, value in attributes.items():
        setattr(changed, keyword, value)
    return changed


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"PatientID": "OTHER-123"}, r"Patient ID \(0010,0020\) differs"),
        ({"IssuerOfPatientID": "HOSP-B"}, r"Issuer of Patient ID \(0010,0021\) differs"),
        ({"PatientBirthDate": "19700101"}, r"Patient's Birth Date \(0010,0030\) differs"),
        ({"PatientSex": "F"}, r"Patient's Sex \(0010,0040\) differs"),
        ({"PatientName": "Other^Person"}, r"Patient's Name \(0010,0010\) differs"),
    ],
    ids=["patient-id", "issuer", "birth-date", "sex", "name"],
)
def test_sr_rejects_mixed_patients(study, attributes, message):
    first = _with(
        study.ct_datasets[0],
        IssuerOfPatientID="HOSP-A",
        PatientBirthDate="19600101",
        PatientSex="M",
    )
    other = _with(first, SOPInstanceUID=study.ct_datasets[1].SOPInstanceUID, **attributes)
    with pytest.raises(ValueError, match=message):
        build_sr(study.result, bundle_config(), [first, other], series_number=900)


def test_sr_accepts_name_with_trailing_carets(study):
    other = _with(study.ct_datasets[0], PatientName=f"{study.radiograph_dataset.PatientName}^^")
    sr = build_sr(
        study.result, bundle_config(), [study.radiograph_dataset, other], series_number=900
    )
    assert sr.PatientID == study.radiograph_dataset.PatientID


def test_sr_rejects_source_without_sop_uid(study):
    broken = _with(study.ct_datasets[0], SOPInstanceUID="")
    with pytest.raises(ValueError, match=r"SOP Instance UID \(0008,0018\)"):
        build_sr(
            study.result, bundle_config(), [study.radiograph_dataset, broken], series_number=900
        )


def _with_probabilities(study, probabilities):
    hips = []
    for hip in study.result.hips:
        prediction = replace(hip.prediction, probabilities=probabilities)
        hips.append(replace(hip, prediction=prediction))
    return replace(study.result, hips=hips)


@pytest.mark.parametrize(
    ("probabilities", "message"),
    [
        ({c: 0.3 for c in HipClass}, r"sum to 1\.200000, not 1"),
        (
            {
                HipClass.NORMAL: 1.2,
                HipClass.OSTEOARTHRITIS: -0.2,
                HipClass.OSTEONECROSIS: 0.0,
                HipClass.FAI: 0.0,
            },
            r"outside \[0, 1\]",
        ),
        ({HipClass.NORMAL: 0.5, HipClass.OSTEOARTHRITIS: 0.5}, r"lack the classes"),
    ],
    ids=["sum", "range", "missing-class"],
)
def test_sr_rejects_invalid_probabilities(study, probabilities, message):
    result = _with_probabilities(study, probabilities)
    with pytest.raises(ValueError, match=message):
        build_sr(result, bundle_config(), study.sources, series_number=900)


def test_sr_rejects_duplicate_side(study):
    right = next(h for h in study.result.hips if h.laterality is Laterality.RIGHT)
    result = replace(study.result, hips=[right, right])
    with pytest.raises(ValueError, match="right hip twice"):
        build_sr(result, bundle_config(), study.sources, series_number=900)


def test_sr_single_hip_ct_only(study):
    left = next(h for h in study.result.hips if h.laterality is Laterality.LEFT)
    left_ct_only = replace(left, radiograph_region=None, radiograph_cam=None)
    result = replace(study.result, hips=[left_ct_only], radiograph=None)
    sr = build_sr(result, bundle_config(), study.ct_datasets, series_number=900)
    groups = _groups(sr)
    assert [_laterality(g) for g in groups] == [_key(codes.LEFT)]
    images = [c for c in groups[0].ContentSequence if c.ValueType == "IMAGE"]
    assert len(images) == 1
    assert sr.StudyInstanceUID == study.ct_datasets[0].StudyInstanceUID
