"""``hipfuse-node demo``: the main job on one machine, with separate peer processes.

1. The sample AP pelvis radiograph is copied with new Study, Series and SOP
   Instance UIDs, a new Accession Number and today's Study Date. The sample
   pelvis CT (NIfTI) is written as a DICOM CT series with the radiograph's
   patient and the same new study, so both form one study as PACS would
   route it. Only these temporary copies change.
2. A receiving storage SCP (:mod:`hipfuse.node.receiver`) starts as a separate
   process on 127.0.0.1 and stands in for PACS.
3. The node starts on 127.0.0.1 with the demo bundle, that receiver as its
   destination and its HL7 listener on another port of 127.0.0.1.
4. A separate process (:mod:`hipfuse.integrations.hl7.send`) delivers the
   sample osteoarthritis note over MLLP as an ORU^R01 for the study's
   patient and accession number (:mod:`hipfuse.node.demo_text`).
5. A separate sender process sends the study: DCMTK's ``/usr/bin/storescu``
   when installed, otherwise :mod:`hipfuse.node.scu`.
6. Once the SR is at the receiver, its findings are read back from the
   received file and printed with whether clinical text was used, the
   attention weight of each input and the paths of the Grad-CAM overlays.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from hipfuse.node.states import StudyState

if TYPE_CHECKING:
    from hipfuse.node.jobstore import JobStore
    from hipfuse.node.service import NodeService

SAMPLE_RADIOGRAPH = Path("xray") / "ap_pelvis_ddh_1.dcm"
SAMPLE_CT = Path("ct") / "pelvis_ct_3mm.nii.gz"
DCMTK_STORESCU = Path("/usr/bin/storescu")
NODE_AE_TITLE = "HIPFUSE"
SENDER_AE_TITLE = "DEMOSCU"
RECEIVER_AE_TITLE = "DEMOPACS"
# Seconds without a new instance before the demo node treats the study as complete.
DEMO_QUIET_PERIOD_S = 2.0
# Seconds the demo node waits for HL7 text; the note is delivered before the images.
DEMO_TEXT_WAIT_S = 10.0
_SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_FINAL_STATES = (StudyState.DONE, StudyState.FAILED, StudyState.SKIPPED)


@dataclass(frozen=True)
class SampleStudy:
    """The demo study written to disk: one radiograph and one CT series.

    ``patient_id`` and ``accession_number`` are the study's, for the demo's
    HL7 message; like every patient attribute they are never printed or logged.
    """

    study_instance_uid: str
    radiograph: Path
    ct_slices: tuple[Path, ...]
    patient_id: str = ""
    accession_number: str = ""
    study_date: str = ""

    @property
    def files(self) -> list[Path]:
        """Every file of the study, the radiograph first."""
        return [self.radiograph, *self.ct_slices]


def find_samples_dir() -> Path:
    """Return ``samples/`` of the working directory, else of the source checkout."""
    for candidate in (Path("samples"), Path(__file__).resolve().parents[1] / "samples"):
        if (candidate / SAMPLE_RADIOGRAPH).is_file() and (candidate / SAMPLE_CT).is_file():
            return candidate
    raise FileNotFoundError(
        f"sample data not found: run from the hipfuse checkout, which has "
        f"samples/{SAMPLE_RADIOGRAPH} and samples/{SAMPLE_CT}"
    )


def prepare_sample_study(
    samples_dir: Path,
    out_dir: Path,
    *,
    patient_id: str | None = None,
    accession_number: str | None = None,
) -> SampleStudy:
    """Write the sample radiograph and CT as one DICOM study under ``out_dir``.

    The radiograph copy gets new Study, Series and SOP Instance UIDs, an
    Accession Number and today's Study Date, so each call makes a study that
    no node has seen. The CT series carries the radiograph's patient (Patient
    ID, Patient's Name) and the new study.

    Parameters
    ----------
    patient_id
        Replaces the sample's Patient ID; ``None`` keeps it.
    accession_number
        ``None`` makes a new one of 12 characters (``D`` and 11 hexadecimal digits).
    """
    import pydicom
    from pydicom.uid import generate_uid

    from hipfuse.inference.readers.ct import reorient_to_canonical
    from hipfuse.inference.readers.dicom_series_writer import write_ct_series
    from hipfuse.inference.readers.nifti import read_nifti_ct
    from hipfuse.inference.types import SourceIdentity

    out_dir.mkdir(parents=True, exist_ok=True)
    radiograph = pydicom.dcmread(samples_dir / SAMPLE_RADIOGRAPH)
    study_uid = generate_uid()
    radiograph.StudyInstanceUID = study_uid
    radiograph.SeriesInstanceUID = generate_uid()
    radiograph.SOPInstanceUID = generate_uid()
    radiograph.file_meta.MediaStorageSOPInstanceUID = radiograph.SOPInstanceUID
    if patient_id is not None:
        radiograph.PatientID = patient_id
    # Accession Number is SH: at most 16 characters.
    radiograph.AccessionNumber = accession_number or f"D{secrets.token_hex(6)[:11].upper()}"
    radiograph.StudyDate = date.today().strftime("%Y%m%d")
    radiograph_path = out_dir / "radiograph.dcm"
    radiograph.save_as(radiograph_path, enforce_file_format=True)

    identity = SourceIdentity(
        patient_id=str(radiograph.get("PatientID", "")),
        patient_name=str(radiograph.get("PatientName", "")),
        study_instance_uid=study_uid,
        accession_number=str(radiograph.get("AccessionNumber", "") or ""),
        study_date=str(radiograph.get("StudyDate", "") or ""),
    )
    volume = reorient_to_canonical(read_nifti_ct(samples_dir / SAMPLE_CT))
    ct_paths = write_ct_series(
        volume,
        out_dir / "ct",
        identity,
        series_description="pelvis CT converted from NIfTI",
        series_number=2,
        manufacturer="NIfTI conversion",
    )
    return SampleStudy(
        study_uid,
        radiograph_path,
        tuple(ct_paths),
        patient_id=identity.patient_id,
        accession_number=identity.accession_number,
        study_date=identity.study_date,
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sender_command(files: list[Path], port: int, host: str = "127.0.0.1") -> list[str]:
    """Return the command that sends ``files``: DCMTK storescu, else hipfuse's SCU."""
    if DCMTK_STORESCU.is_file():
        # -R proposes only the contexts the files need; -xw adds JPEG 2000 for
        # the sample radiograph, which is JPEG 2000 compressed.
        head = [str(DCMTK_STORESCU), "-aet", SENDER_AE_TITLE, "-aec", NODE_AE_TITLE, "-R", "-xw"]
    else:
        head = [sys.executable, "-m", "hipfuse.node.scu", "--aet", SENDER_AE_TITLE]
        head += ["--aec", NODE_AE_TITLE]
    return [*head, host, str(port), *map(str, files)]


class ReceiverProcess:
    """The receiving SCP in a child process, with its stdout read in a thread."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.lines: list[str] = []
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hipfuse.node.receiver",
                "--out",
                str(out_dir),
                "--port",
                "0",
                "--ae-title",
                RECEIVER_AE_TITLE,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        first = self._process.stdout.readline().split()
        if len(first) != 3 or first[0] != "listening":
            self.stop()
            raise RuntimeError(f"the receiver did not start: {' '.join(first) or 'no output'}")
        self.port = int(first[2])
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.lines.append(line.strip())

    def stop(self) -> None:
        """Stop the child by its PID (SIGTERM) and wait for it."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def _settings_text(data_dir: Path, port: int, receiver_port: int, hl7_port: int) -> str:
    return f"""\
# Settings of the node that `hipfuse-node demo` ran.
[node]
ae_title = "{NODE_AE_TITLE}"
bind_address = "127.0.0.1"
port = {port}
allowed_callers = [{{ ae_title = "{SENDER_AE_TITLE}", addresses = ["127.0.0.1"] }}]

[[destinations]]
name = "receiver"
ae_title = "{RECEIVER_AE_TITLE}"
host = "127.0.0.1"
port = {receiver_port}

[study]
quiet_period_s = {DEMO_QUIET_PERIOD_S}

[hl7]
enabled = true
bind_address = "127.0.0.1"
port = {hl7_port}
text_wait_s = {DEMO_TEXT_WAIT_S}

[storage]
data_dir = "{data_dir}"
min_free_bytes = 67108864

[http]
enabled = false

[send]
max_attempts = 3
backoff_initial_s = 1.0
backoff_max_s = 5.0

[logging]
level = "WARNING"
json = false
"""


def run_demo(bundle_dir: Path, workdir: Path | None = None, timeout_s: float = 600.0) -> int:
    """Run the demo and print the SR's findings; return the exit status (0 when an SR came)."""
    if not (bundle_dir / "bundle.json").is_file():
        print(
            f"hipfuse-node demo: no model bundle in {bundle_dir}; build the demo bundle with "
            "`hipfuse-train demo-bundle --out bundles/demo` or pass --bundle",
            file=sys.stderr,
        )
        return 3
    keep = workdir is not None
    root = Path(workdir) if keep else Path(tempfile.mkdtemp(prefix="hipfuse-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _run(bundle_dir, root, timeout_s, keep)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _run(bundle_dir: Path, root: Path, timeout_s: float, keep: bool) -> int:
    from hipfuse.config.logging import configure_logging
    from hipfuse.config.settings import load_settings
    from hipfuse.node.demo_text import deliver_note
    from hipfuse.node.service import NodeService, ServiceError

    configure_logging("WARNING", json=False)
    print("preparing the sample study (radiograph copy, CT converted from NIfTI) ...")
    study = prepare_sample_study(find_samples_dir(), root / "input")

    receiver = ReceiverProcess(root / "received")
    service = None
    try:
        config = root / "node.toml"
        config.write_text(_settings_text(root / "node", free_port(), receiver.port, free_port()))
        service = NodeService(load_settings(config), bundle_dir=bundle_dir)
        print(f"starting the node with bundle {bundle_dir} ...")
        try:
            service.start()
        except ServiceError as error:
            print(f"hipfuse-node demo: the node cannot start: {error}", file=sys.stderr)
            return 3
        if not deliver_note(find_samples_dir(), root / "hl7", service.hl7_port, study):
            return 1
        command = sender_command(study.files, service.port)
        print(f"sending {len(study.files)} instances with {Path(command[0]).name} ...")
        sent = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=300,
            # DCMTK leaves Nagle's algorithm on unless TCP_NODELAY is set.
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        if sent.returncode != 0:
            print(f"the sender failed:\n{sent.stdout}{sent.stderr}", file=sys.stderr)
            return 1
        print(f"waiting {DEMO_QUIET_PERIOD_S:g} s of quiet, then analysing and sending back ...")
        state = _wait_for_study(service, study.study_instance_uid, timeout_s)
        return _report(service, study, receiver, state, config if keep else None)
    finally:
        if service is not None:
            service.stop()
        receiver.stop()


def _wait_for_study(service: NodeService, study_uid: str, timeout_s: float) -> StudyState | None:
    deadline = time.monotonic() + timeout_s
    assert service.jobstore is not None
    while time.monotonic() < deadline:
        try:
            state = service.jobstore.get_study(study_uid).state
        except KeyError:
            state = None
        if state in _FINAL_STATES:
            return state
        time.sleep(0.2)
    return None


def _report(
    service: NodeService,
    study: SampleStudy,
    receiver: ReceiverProcess,
    state: StudyState | None,
    config: Path | None,
) -> int:
    import pydicom

    from hipfuse.node.demo_text import attention_line, print_text_use
    from hipfuse.node.sr_findings import read_comments, read_hip_findings

    jobstore = service.jobstore
    assert jobstore is not None
    if state is not StudyState.DONE:
        record = jobstore.get_study(study.study_instance_uid) if state else None
        reason = f" ({record.state_reason})" if record and record.state_reason else ""
        print(f"no result: the study ended {state or 'in time-out'}{reason}", file=sys.stderr)
        return 1

    received = sorted((receiver.out_dir / study.study_instance_uid).glob("*.dcm"))
    datasets = {path: pydicom.dcmread(path) for path in received}
    reports = [p for p, ds in datasets.items() if ds.SOPClassUID.startswith(_SR_SOP_CLASS_PREFIX)]
    overlays = [path for path in received if path not in reports]
    if not reports:
        print(f"no SR arrived in {receiver.out_dir}", file=sys.stderr)
        return 1
    sr = datasets[reports[0]]
    print()
    print(f"SR received: {reports[0]}")
    print(f"  {sr.SeriesDescription}")
    print_text_use(sr, jobstore, study.study_instance_uid)
    for finding in read_hip_findings(sr):
        others = ", ".join(
            f"{name} {value:.2f}"
            for name, value in finding.probabilities.items()
            if name != finding.finding
        )
        probability = finding.probability or 0.0
        print(
            f"  {finding.laterality.lower()} hip: {finding.finding} "
            f"(probability {probability:.2f}; {others})"
        )
        print(f"    attention: {attention_line(finding.attention)}")
    for comment in read_comments(sr):
        print(f"  comment: {comment}")
    worker = service.worker
    if worker is not None and worker.bundle_config.intended_use.value == "demo":
        print(
            "  The demo bundle was trained on simulated images: on this real study its "
            "findings show that the path works, not what the hips have."
        )
    print(f"Grad-CAM overlays received ({len(overlays)} Secondary Capture images):")
    for path in overlays:
        print(f"  {path}")

    latency = study_latency(jobstore, study.study_instance_uid)
    if latency is not None:
        before_sr = sum(
            latency[name]
            for name in ("waited_s", "decode_s", "text_wait_s", "analysis_s", "sr_encode_s")
        )
        print(
            f"latency: {latency['latency_s']:.2f} s from the last instance received to the SR "
            f"stored at the receiver: {latency['waited_s']:.2f} s until the analysis started "
            f"({DEMO_QUIET_PERIOD_S:g} s of it the quiet period), decode "
            f"{latency['decode_s']:.2f} s, wait for clinical text {latency['text_wait_s']:.2f} s, "
            f"analysis {latency['analysis_s']:.2f} s ({latency['model_compute_s']:.3f} s of it "
            f"in the networks), SR encoding {latency['sr_encode_s']:.2f} s, sending "
            f"{max(latency['latency_s'] - before_sr, 0.0):.2f} s; the Secondary Captures "
            "followed"
        )
    if config is not None:
        print(f"node settings: {config} (try hipfuse-node status --config {config})")
    return 0


def study_latency(jobstore: JobStore, study_uid: str) -> dict[str, float] | None:
    """Return the time from the study's last instance to its SR stored at a destination.

    The last instance is the one before the latest analysis, as the worker
    recorded it. Also returns the worker's times recorded with the analysis:
    ``waited_s`` from the last instance to the start of the analysis,
    ``duration_s`` of the analysis in all, of which ``decode_s``,
    ``text_wait_s``, ``analysis_s`` (``model_s`` of it in the prediction,
    ``model_compute_s`` in the networks) and ``encode_s`` (``sr_encode_s``
    of it before the SR was queued). All in seconds; ``None`` until an SR
    was sent.
    """
    from hipfuse.node.states import JobState

    sent = [
        item
        for item in jobstore.list_outbox(study_uid=study_uid, states=[JobState.SUCCEEDED])
        if item.sop_class_uid.startswith(_SR_SOP_CLASS_PREFIX)
    ]
    analysed = [
        event
        for event in jobstore.list_events(study_uid, limit=1000)
        if event.event == "study_analysed"
    ]
    if not sent or not analysed:
        return None
    details = analysed[-1].details
    timings = {
        name: float(details.get(name, 0.0))
        for name in (
            "waited_s",
            "duration_s",
            "decode_s",
            "text_wait_s",
            "analysis_s",
            "model_s",
            "model_compute_s",
            "encode_s",
            "sr_encode_s",
        )
    }
    sr_stored_at = min(item.updated_at for item in sent)
    latency_s = sr_stored_at - float(details["last_instance_at"])
    return {"latency_s": latency_s, **timings}
