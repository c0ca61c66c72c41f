"""The clinical-text part of ``hipfuse-node demo``: deliver the sample note, show its use.

The note goes to the node's MLLP listener from a separate process
(:mod:`hipfuse.integrations.hl7.send`) over a real socket, as an ORU^R01 for
the study's patient and accession number. After the analysis, the SR's
"Clinical text available" item, the sources the job store recorded and each
hip's attention weights show that the model used it.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from hipfuse.node.demo import SampleStudy
    from hipfuse.node.jobstore import JobStore

SAMPLE_NOTE = Path("text") / "hip_osteoarthritis_left_mtsamples_258.txt"
# MSH-3 Sending Application of the demo's note, as a radiology system would fill it.
DEMO_SENDING_APPLICATION = "DEMO-RIS"
_INPUT_NAMES = {"radiograph": "radiograph", "ct": "CT", "text": "clinical text"}


def deliver_note(samples_dir: Path, out_dir: Path, port: int, study: SampleStudy) -> bool:
    """Send the sample note to the listener on 127.0.0.1:``port``; print the ACK code.

    Returns whether the node accepted the message (AA). The message file is
    kept in ``out_dir``.
    """
    from hipfuse.integrations.hl7.send import note_message

    note = (samples_dir / SAMPLE_NOTE).read_text(encoding="utf-8")
    control_id = f"DEMO{study.accession_number}"
    message = note_message(
        control_id=control_id,
        patient_id=study.patient_id,
        accession_number=study.accession_number,
        note=note,
        observed_at=datetime.now(),
        sending_application=DEMO_SENDING_APPLICATION,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{control_id}.hl7"
    path.write_bytes(message.encode("utf-8"))
    print(
        f"delivering the clinical note {SAMPLE_NOTE.name} ({len(note)} characters) as "
        f"ORU^R01 {control_id} over MLLP with python -m hipfuse.integrations.hl7.send ..."
    )
    sent = subprocess.run(
        [sys.executable, "-m", "hipfuse.integrations.hl7.send", "--port", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if sent.returncode != 0:
        print(f"the HL7 sender failed:\n{sent.stdout}{sent.stderr}", file=sys.stderr)
        return False
    code = sent.stdout.split()[-1] if sent.stdout.split() else "none"
    print(f"  the node acknowledged it with {code}")
    return True


def text_sources(jobstore: JobStore, study_uid: str) -> list[str]:
    """Return the sources of the study's latest clinical text, as the job store records them."""
    events = [
        event
        for event in jobstore.list_events(study_uid, limit=1000)
        if event.event == "clinical_text_gathered"
    ]
    return list(events[-1].details.get("sources", [])) if events else []


def print_text_use(sr: Dataset, jobstore: JobStore, study_uid: str) -> None:
    """Print whether the SR records clinical text as available, and where the text came from."""
    from hipfuse.node.sr_findings import read_clinical_text_available

    available = read_clinical_text_available(sr)
    if available is None:
        print("  clinical text available: not stated in the SR")
    elif available:
        sources = ", ".join(text_sources(jobstore, study_uid)) or "no source recorded"
        print(f"  clinical text available: Yes (from {sources})")
    else:
        print("  clinical text available: No (the images were analysed alone)")


def attention_line(attention: dict[str, float]) -> str:
    """Format the attention weights of one hip: ``radiograph 0.41, CT 0.33, clinical text 0.26``."""
    parts = [
        f"{name} {attention[key]:.2f}" for key, name in _INPUT_NAMES.items() if key in attention
    ]
    return ", ".join(parts) or "none reported"
