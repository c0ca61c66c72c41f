"""``hipfuse-node demo`` end to end on 127.0.0.1, with separate sender and receiver processes.

The bundle has random weights (see worker_helpers), so only the shape of the
output is checked, not the classes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pydicom
from encode_study import run_tool, tool_available
from worker_helpers import untrained_bundle_dir

from hipfuse.node.sr_findings import read_clinical_text_available, read_hip_findings


def test_demo_prints_findings_and_overlays(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hipfuse.node.cli",
            "demo",
            "--bundle",
            str(untrained_bundle_dir()),
            "--workdir",
            str(workdir),
            "--timeout-s",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"right hip: .+ \(probability 0\.\d\d; ", out)
    assert re.search(r"left hip: .+ \(probability 0\.\d\d; ", out)
    assert re.search(r"the node acknowledged it with AA", out)
    assert re.search(r"clinical text available: Yes \(from hl7:DEMOD[0-9A-F]{11}\)", out)
    text_weights = re.findall(
        r"attention: radiograph 0\.\d\d, CT 0\.\d\d, clinical text (\S+)", out
    )
    assert len(text_weights) == 2
    assert all(float(weight) > 0 for weight in text_weights)
    assert "NOT FOR CLINICAL USE" in out
    assert "Grad-CAM overlays received (8 Secondary Capture images)" in out
    assert re.search(r"latency: \d+\.\d\d s from the last instance received", out)
    # Neither the sample's Patient's Name and ID nor the note may leak into the output.
    assert "Patient 747598" not in result.stderr
    assert "331_DDH_1" not in out + result.stderr
    assert "degenerative arthritis" not in out + result.stderr

    sr_path = Path(re.search(r"SR received: (\S+)", out).group(1))
    assert sr_path.is_relative_to(workdir / "received")
    sr = pydicom.dcmread(sr_path)
    findings = read_hip_findings(sr)
    assert [finding.laterality for finding in findings] == ["Right", "Left"]
    assert read_clinical_text_available(sr) is True
    overlays = re.findall(r"^  (/\S+\.dcm)$", out, flags=re.MULTILINE)
    assert len(overlays) == 8
    if tool_available("dciodvfy"):
        for path in [sr_path, *overlays]:
            check = run_tool("dciodvfy", path)
            assert "Error" not in check.stdout + check.stderr, path
