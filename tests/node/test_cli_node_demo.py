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

from hipfuse.node.sr_findings import read_hip_findings


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
    assert "NOT FOR CLINICAL USE" in out
    assert "Grad-CAM overlays received (8 Secondary Capture images)" in out
    assert re.search(r"latency: \d+\.\d\d s from the last instance received", out)
    # The Patient's Name of the sample must not leak through library warnings.
    assert "Patient 747598" not in result.stderr

    sr_path = Path(re.search(r"SR received: (\S+)", out).group(1))
    assert sr_path.is_relative_to(workdir / "received")
    findings = read_hip_findings(pydicom.dcmread(sr_path))
    assert [finding.laterality for finding in findings] == ["Right", "Left"]
    overlays = re.findall(r"^  (/\S+\.dcm)$", out, flags=re.MULTILINE)
    assert len(overlays) == 8
    if tool_available("dciodvfy"):
        for path in [sr_path, *overlays]:
            check = run_tool("dciodvfy", path)
            assert "Error" not in check.stdout + check.stderr, path
