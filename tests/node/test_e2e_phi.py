"""Patient data stays out of the node's log, and its files are readable by the owner only.

One ``hipfuse-node run`` process, started with umask 0022 and log level DEBUG
(set through ``HIPFUSE_LOGGING__LEVEL``), receives three studies of the sample
radiograph and CT. Each study belongs to a patient with distinctive
attributes: a Latin name, a Chinese name in ISO_IR 192 (UTF-8), and a Latin
name with a birth date that is not a valid DA. For each patient an ORU^R01
with a distinctive note arrives over MLLP from python-hl7's ``mllp_send``
before the images. A training message (MSH-11 T) of the first patient is
dropped into the watched HL7 folder and rejected. The results go to
hipfuse's receiving SCP (a pynetdicom storage SCP) in a separate process on
127.0.0.1.

While the node still runs, with the job store open, the mode of every file and
folder under ``storage.data_dir`` is recorded. The node is then stopped, so
its log also contains the shutdown lines. Every line of its stdout and
stderr, and the output of ``hipfuse-node status --json``, is searched for the
patients' names, IDs, birth dates and any run of three words of their notes.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pydicom
import pytest
from peers import stop_process, wait_for
from worker_helpers import node_settings, untrained_bundle_dir

from hipfuse.node.demo import (
    SENDER_AE_TITLE,
    ReceiverProcess,
    SampleStudy,
    find_samples_dir,
    free_port,
    prepare_sample_study,
    sender_command,
)
from hipfuse.node.jobstore import JobStore
from hipfuse.node.states import StudyState

# The HL7 message builders live with the integrations tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integrations"))
from hl7_builders import ack_segments, framed, hl7_escape, message, mllp_send, msh

SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
# The HL7 folder watched by the node, inside storage.data_dir as default.toml suggests.
WATCH_DIR_NAME = "hl7-inbox"
REJECTED_FILE_NAME = "ris-export-0001.hl7"
# A run of this many consecutive words of a note (characters, for Chinese) counts as note text.
NOTE_RUN_WORDS = 3
# A Chinese character, or a run of letters and digits of any other script.
_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_\u3400-\u9fff\uf900-\ufaff]+")


@dataclass(frozen=True)
class Patient:
    """The distinctive attributes of one test patient, as DICOM and HL7 carry them."""

    case_id: str
    name: str  # DICOM PN and HL7 XPN: family^given
    patient_id: str
    birth_date: str  # Patient's Birth Date as the images carry it
    note: str
    specific_character_set: str | None  # DICOM (0008,0005); None leaves it out
    hl7_charset: str  # MSH-18; empty means the node's default (UTF-8)
    sr_expected: bool = True

    @property
    def name_components(self) -> list[str]:
        return [part for part in re.split(r"[\^=]", self.name) if part]

    @property
    def birth_date_forms(self) -> list[str]:
        date = re.sub(r"\D", "", self.birth_date)
        return [date, f"{date[:4]}-{date[4:6]}-{date[6:]}"]


PATIENTS = (
    Patient(
        case_id="latin",
        name="Quixotica^Zebulon",
        patient_id="PHI-QZ-60417",
        birth_date="19470923",
        note=(
            "Persistent marmalade-coloured ache behind the left greater trochanter since "
            "the Reykjavik lighthouse marathon; limps after climbing the belfry stairs."
        ),
        specific_character_set=None,
        hl7_charset="",
    ),
    Patient(
        case_id="chinese",
        name="张^伟",
        patient_id="PHI-ZW-60418",
        birth_date="19581204",
        note="左髋大转子后方橘酱色样酸痛，自雷克雅未克灯塔马拉松后持续，登钟楼台阶后跛行。",
        specific_character_set="ISO_IR 192",
        hl7_charset="UNICODE UTF-8",
    ),
    # A birth date written YYYY-MM-DD, which is not a valid DA.
    Patient(
        case_id="invalid-birth-date",
        name="Vandermeer^Ottoline",
        patient_id="PHI-VO-60419",
        birth_date="1961-03-17",
        note=(
            "Stiffness of the right hip after pruning the quince orchard at Tillingham; "
            "wakes at night from a dull throb near the saffron-stained groin."
        ),
        specific_character_set=None,
        hl7_charset="",
        # NOTE: highdicom 0.28 raises on a Patient's Birth Date that is not a valid
        # DA, so this study fails at encoding and no SR is sent. Only the log is
        # checked for this patient.
        sr_expected=False,
    ),
)
SR_PATIENTS = [patient for patient in PATIENTS if patient.sr_expected]


def tokens(text: str) -> list[str]:
    """Split text into case-folded words; each Chinese character is a word of its own."""
    return [token.casefold() for token in _TOKEN.findall(text)]


def word_runs(text: str, length: int = NOTE_RUN_WORDS) -> set[tuple[str, ...]]:
    """Return every run of ``length`` consecutive words of ``text``."""
    words = tokens(text)
    return {tuple(words[i : i + length]) for i in range(len(words) - length + 1)}


def oru_for(patient: Patient, control_id: str, accession: str, observed: str) -> bytes:
    """An ORU^R01 with the patient's PID-3, PID-5 and PID-7, and the note in one OBX."""
    text = message(
        msh(control_id, charset=patient.hl7_charset),
        f"PID|1||{patient.patient_id}^^^HOSP^MR||{patient.name}||{patient.birth_date_forms[0]}|F",
        f"ORC|RE|PL{control_id}|FL{control_id}",
        f"OBR|1|PL{control_id}|FL{control_id}|XRPELVIS^XR pelvis AP|||{observed}"
        f"|||||||||||{accession}",
        f"OBX|1|TX|18782-3^Radiology study observation^LN||{hl7_escape(patient.note)}"
        f"||||||F|||{observed}",
    )
    return text.encode("utf-8")


def set_patient(study: SampleStudy, patient: Patient) -> None:
    """Write the patient's name, birth date and character set into every file of the study."""
    for path in study.files:
        dataset = pydicom.dcmread(path)
        if patient.specific_character_set:
            dataset.SpecificCharacterSet = patient.specific_character_set
        dataset.PatientName = patient.name
        with warnings.catch_warnings():
            # pydicom warns about the invalid date that one case writes on purpose.
            warnings.filterwarnings("ignore", "Invalid value for VR DA", UserWarning)
            dataset.PatientBirthDate = patient.birth_date
        dataset.save_as(path, enforce_file_format=True)


@dataclass
class Run:
    studies: dict[str, SampleStudy]
    states: dict[str, StudyState]  # by Study Instance UID
    data_dir: Path
    modes: dict[Path, int]  # st_mode of everything under data_dir, recorded while running
    # (stream, line) of the node's stdout and stderr, and the output of
    # ``hipfuse-node status --json``, which shows the reasons of failed studies.
    log_lines: list[tuple[str, str]]
    acks: list[bytes]
    received_srs: list[pydicom.Dataset]


def _studies_finished(data_dir: Path, uids: list[str]) -> dict[str, StudyState] | None:
    """Return each study's state once all are done or failed, else ``None``."""
    with JobStore.in_data_dir(data_dir) as store:
        states = {}
        for uid in uids:
            try:
                states[uid] = store.get_study(uid).state
            except KeyError:
                return None
    finished = (StudyState.DONE, StudyState.FAILED)
    return states if all(state in finished for state in states.values()) else None


def _modes(root: Path) -> dict[Path, int]:
    modes = {root: root.lstat().st_mode}
    for path in root.rglob("*"):
        modes[path] = path.lstat().st_mode
    return modes


def _received_srs(folder: Path) -> list[pydicom.Dataset]:
    datasets = [pydicom.dcmread(path) for path in sorted(folder.rglob("*.dcm"))]
    return [ds for ds in datasets if ds.SOPClassUID.startswith(SR_CLASS_PREFIX)]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("phi-e2e")
    samples = find_samples_dir()
    studies = {}
    for patient in PATIENTS:
        study = prepare_sample_study(samples, root / patient.case_id, patient_id=patient.patient_id)
        set_patient(study, patient)
        studies[patient.case_id] = study

    receiver = ReceiverProcess(root / "received")
    node: subprocess.Popen | None = None
    stdout_path, stderr_path = root / "node.stdout", root / "node.stderr"
    try:
        hl7_port = free_port()
        config, settings = node_settings(
            root,
            port=free_port(),
            destinations=[("receiver", "DEMOPACS", receiver.port)],
            callers=(SENDER_AE_TITLE,),
            quiet_period_s=1.0,
            extra=(
                f'\n[hl7]\nenabled = true\nbind_address = "127.0.0.1"\nport = {hl7_port}\n'
                f'text_wait_s = 5.0\nwatch_dir = "{root / "data" / WATCH_DIR_NAME}"\n'
            ),
        )
        data_dir = settings.storage.data_dir
        assert not data_dir.exists(), "the node must create data_dir itself"
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            node = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hipfuse.node.cli",
                    "run",
                    "--config",
                    str(config),
                    "--bundle",
                    str(untrained_bundle_dir()),
                ],
                stdout=stdout,
                stderr=stderr,
                umask=0o022,
                env={
                    **os.environ,
                    "HIPFUSE_LOGGING__LEVEL": "DEBUG",
                    "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1",
                },
            )

        def started() -> bool:
            assert node is not None
            if node.poll() is not None:
                raise RuntimeError(f"the node exited at start:\n{stderr_path.read_text()}")
            return b'"node_started"' in stderr_path.read_bytes()

        wait_for(started, 120, "the node to start")

        acks = []
        observed = datetime.now().strftime("%Y%m%d%H%M%S")
        for number, patient in enumerate(PATIENTS, start=1):
            study = studies[patient.case_id]
            outbound = root / f"{patient.case_id}.mllp"
            outbound.write_bytes(
                framed(oru_for(patient, f"PHI-MSG-{number}", study.accession_number, observed))
            )
            acks += mllp_send(hl7_port, outbound)

        # A training message (MSH-11 T) dropped into the watched folder is
        # rejected, so the folder gets a failed/ copy and a reason file.
        training = root / REJECTED_FILE_NAME
        latin = PATIENTS[0]
        oru = oru_for(latin, "PHI-MSG-T", studies[latin.case_id].accession_number, observed)
        training.write_bytes(oru.replace(b"|P|2.5.1", b"|T|2.5.1", 1))
        training.chmod(0o600)  # the sender's file; the node only moves it
        watch_dir = data_dir / WATCH_DIR_NAME
        os.replace(training, watch_dir / REJECTED_FILE_NAME)
        wait_for(
            lambda: (watch_dir / "failed" / f"{REJECTED_FILE_NAME}.reason.txt").exists(),
            30,
            "the training message to be rejected",
        )

        files = [path for study in studies.values() for path in study.files]
        command = sender_command(files, int(settings.node.port))
        sent = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        uids = [study.study_instance_uid for study in studies.values()]
        states = wait_for(lambda: _studies_finished(data_dir, uids), 240, "every study to finish")
        modes = _modes(data_dir)
        status = subprocess.run(
            [sys.executable, "-m", "hipfuse.node.cli", "status", "--config", str(config), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr

        assert stop_process(node, timeout_s=60) is None
        assert node.returncode == 0, stderr_path.read_text()
        log_lines = [
            (stream, line)
            for stream, path in (("stdout", stdout_path), ("stderr", stderr_path))
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
        ]
        log_lines.append(("status", status.stdout))
        srs = _received_srs(root / "received")
        yield Run(studies, states, data_dir, modes, log_lines, acks, srs)
    finally:
        if node is not None:
            stop_process(node)
        receiver.stop()


def _searchable(line: str) -> str:
    """Return the line followed by the keys and values of its JSON, with escapes decoded.

    structlog's JSON renderer writes non-ASCII characters as ``\\uXXXX``, so
    a Chinese name would not be found in the raw line alone.
    """
    try:
        decoded = json.loads(line)
    except json.JSONDecodeError:
        return line
    return "\n".join([line, *_strings(decoded)])


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in (str(key), *_strings(item))]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return [str(value)]


def _hex_escaped(text: str) -> str:
    r"""Return the UTF-8 bytes of ``text`` as ``repr`` of bytes writes them (``\xe5\xbc...``)."""
    return "".join(f"\\x{byte:02x}" for byte in text.encode("utf-8"))


def _lines_containing(run: Run, needle: str) -> list[str]:
    folded = needle.casefold()
    found = []
    for stream, line in run.log_lines:
        text = _searchable(line).casefold()
        if folded in text or (not needle.isascii() and _hex_escaped(needle) in text):
            found.append(f"{stream}: {line}")
    return found


@pytest.mark.parametrize("patient", SR_PATIENTS, ids=[p.case_id for p in SR_PATIENTS])
def test_study_done(run: Run, patient: Patient) -> None:
    uid = run.studies[patient.case_id].study_instance_uid

    assert run.states[uid] is StudyState.DONE


def test_both_notes_acknowledged(run: Run) -> None:
    assert [ack_segments(ack)["MSA"][1] for ack in run.acks] == ["AA"] * len(PATIENTS)


@pytest.mark.parametrize("patient", SR_PATIENTS, ids=[p.case_id for p in SR_PATIENTS])
def test_sr_carries_patient(run: Run, patient: Patient) -> None:
    # The attributes searched for below did reach the node and its output.
    uid = run.studies[patient.case_id].study_instance_uid
    (sr,) = [sr for sr in run.received_srs if sr.StudyInstanceUID == uid]

    assert str(sr.PatientName) == patient.name
    assert sr.PatientID == patient.patient_id
    assert sr.PatientBirthDate == patient.birth_date


@pytest.mark.parametrize("patient", PATIENTS, ids=[p.case_id for p in PATIENTS])
def test_log_has_study_uid(run: Run, patient: Patient) -> None:
    uid = run.studies[patient.case_id].study_instance_uid
    node_lines = [line for line in _lines_containing(run, uid) if line.startswith("stderr: ")]

    assert node_lines


def test_log_has_debug_lines(run: Run) -> None:
    assert _lines_containing(run, '"level": "debug"')


@pytest.mark.parametrize("patient", PATIENTS, ids=[p.case_id for p in PATIENTS])
def test_log_has_no_patient_name(run: Run, patient: Patient) -> None:
    for component in patient.name_components:
        assert _lines_containing(run, component) == [], component


@pytest.mark.parametrize("patient", PATIENTS, ids=[p.case_id for p in PATIENTS])
def test_log_has_no_patient_id(run: Run, patient: Patient) -> None:
    assert _lines_containing(run, patient.patient_id) == []


@pytest.mark.parametrize("patient", PATIENTS, ids=[p.case_id for p in PATIENTS])
def test_log_has_no_birth_date(run: Run, patient: Patient) -> None:
    for form in patient.birth_date_forms:
        assert _lines_containing(run, form) == [], form


@pytest.mark.parametrize("patient", PATIENTS, ids=[p.case_id for p in PATIENTS])
def test_log_has_no_note_text(run: Run, patient: Patient) -> None:
    note_runs = word_runs(patient.note)
    assert len(note_runs) > 10
    for stream, line in run.log_lines:
        leaked = note_runs & word_runs(_searchable(line))
        assert not leaked, f"{stream}: {line}"


def test_data_dir_has_expected_parts(run: Run) -> None:
    names = {path.relative_to(run.data_dir).parts[0] for path in run.modes if path != run.data_dir}

    for expected in (
        "spool",
        "outbox",
        "jobs.sqlite3",
        "jobs.sqlite3-wal",
        "jobs.sqlite3-shm",
        "hl7.sqlite3",
        "hl7.sqlite3-wal",
        "hl7.sqlite3-shm",
        WATCH_DIR_NAME,
    ):
        assert expected in names, expected


def test_data_dir_owner_only(run: Run) -> None:
    wrong = []
    for path, mode in sorted(run.modes.items()):
        expected = 0o700 if stat.S_ISDIR(mode) else 0o600
        if stat.S_IMODE(mode) != expected:
            wrong.append(f"{oct(stat.S_IMODE(mode))} {path.relative_to(run.data_dir.parent)}")

    assert wrong == []
