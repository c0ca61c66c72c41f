"""Study latency benchmark: last instance received to SR stored at the destination.

Runs the node in this process with an untrained bundle of the chosen preset,
because compute does not depend on the weights' values. A receiving SCP in a
child process is the destination, and DCMTK ``storescu`` (else hipfuse's SCU)
is the sender. Each run sends a fresh copy of the real sample study (the AP
pelvis radiograph and the pelvis CT written as a DICOM series) and a real
note delivered over MLLP first.

The CT slices carry Images in Acquisition (0020,1002), and the node runs with
``complete_when_expected_series_present``: the study is complete when its
last slice arrives, as it is at sites whose scanners fill that attribute.
Without it, add the quiet period to every figure below.

Prints per run the latency, the worker's stages and the model compute: the
text encoder, both image encoders, fusion and the Grad-CAM backward pass, as
the pipeline timed them. Then it prints one comparable figure, the median of
latency / model compute (target 1.3 or lower), and the peak resident memory
of the process. The first study warms up the allocator and kernels and is
not counted.

Usage::

    .venv/bin/python bench/bench_latency.py [--preset default] [--runs 3] [--threads 2]
        [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
SENDER_AE = "DEMOSCU"


def settings_text(data_dir: Path, port: int, receiver_port: int, hl7_port: int, device: str) -> str:
    """Node settings for the run: loopback only, early completion, fast retries."""
    return f"""
[node]
ae_title = "HIPFUSE"
port = {port}
allowed_callers = [{{ ae_title = "{SENDER_AE}", addresses = ["127.0.0.1"] }}]

[[destinations]]
name = "receiver"
ae_title = "DEMOPACS"
host = "127.0.0.1"
port = {receiver_port}

[model]
device = "{device}"

[study]
quiet_period_s = 30.0
complete_when_expected_series_present = true

[hl7]
enabled = true
port = {hl7_port}
text_wait_s = 5.0

[storage]
data_dir = "{data_dir}"
min_free_bytes = 67108864

[send]
backoff_initial_s = 1.0

[logging]
level = "WARNING"
json = false
"""


def set_images_in_acquisition(paths: list[Path]) -> None:
    """Write Images in Acquisition into each CT slice, as many scanners do."""
    import pydicom

    for path in paths:
        dataset = pydicom.dcmread(path)
        dataset.ImagesInAcquisition = len(paths)
        dataset.save_as(path, enforce_file_format=True)


def build_bundle(preset: str, out: Path) -> Path:
    """Save an untrained bundle of ``preset`` and return its folder."""
    from hipfuse.inference.model.bundle import build_untrained_bundle, save_bundle
    from hipfuse.inference.model.config import ModelPreset, make_bundle_config

    config = make_bundle_config(
        ModelPreset(preset), name="bench-latency", version="0", intended_use="research"
    )
    bundle = build_untrained_bundle(config, seed=0, device="cpu")
    return save_bundle(bundle.model, config, out)


def wait_for_study(service, study_uid: str, timeout_s: float) -> None:
    """Wait until the study's SR has been sent (or the study ended otherwise)."""
    from hipfuse.node.demo import study_latency
    from hipfuse.node.jobstore import StudyNotFoundError
    from hipfuse.node.states import StudyState

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            study = service.jobstore.get_study(study_uid)
        except StudyNotFoundError:
            study = None
        if study is not None and study.state in (StudyState.FAILED, StudyState.SKIPPED):
            raise RuntimeError(f"study {study_uid} ended {study.state.value}: {study.state_reason}")
        if study_latency(service.jobstore, study_uid) is not None:
            return
        time.sleep(0.05)
    raise RuntimeError(f"no SR sent for {study_uid} within {timeout_s} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", choices=["default", "demo"])
    parser.add_argument("--runs", type=int, default=3, help="studies counted (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument(
        "--device", default="cpu", help="[model] device of the node: cpu, cuda, auto (default: cpu)"
    )
    args = parser.parse_args()

    import torch

    from hipfuse.config.settings import load_settings
    from hipfuse.node.demo import (
        ReceiverProcess,
        free_port,
        prepare_sample_study,
        sender_command,
        study_latency,
    )
    from hipfuse.node.demo_text import deliver_note
    from hipfuse.node.service import NodeService

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="hipfuse-latency-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        bundle_dir = build_bundle(args.preset, work / "bundle")
        receiver = ReceiverProcess(work / "received")
        config = work / "node.toml"
        config.write_text(
            settings_text(work / "node", free_port(), receiver.port, free_port(), args.device)
        )
        service = NodeService(load_settings(config), bundle_dir=bundle_dir, poll_interval_s=0.25)
        service.start()
        rows = []
        try:
            for run in range(args.runs + 1):
                study = prepare_sample_study(SAMPLES, work / f"study-{run}")
                set_images_in_acquisition(list(study.ct_slices))
                if not deliver_note(SAMPLES, work / f"hl7-{run}", service.hl7_port, study):
                    raise RuntimeError("the note was not acknowledged")
                sent = subprocess.run(
                    sender_command(study.files, service.port),
                    capture_output=True,
                    text=True,
                    env={**os.environ, "TCP_NODELAY": "1"},
                    timeout=300,
                )
                if sent.returncode != 0:
                    raise RuntimeError(f"the sender failed: {sent.stderr[-2000:]}")
                wait_for_study(service, study.study_instance_uid, timeout_s=600)
                latency = study_latency(service.jobstore, study.study_instance_uid)
                assert latency is not None
                label = "warm-up" if run == 0 else f"run {run}"
                print(
                    f"{label}: latency {latency['latency_s']:.2f} s, "
                    f"model compute {latency['model_compute_s']:.2f} s, "
                    + ", ".join(
                        f"{name} {latency[name]:.2f}"
                        for name in (
                            "waited_s",
                            "decode_s",
                            "analysis_s",
                            "sr_encode_s",
                            "encode_s",
                        )
                    )
                )
                if run:
                    rows.append(latency)
        finally:
            service.stop()
            receiver.stop()

    ratios = [row["latency_s"] / row["model_compute_s"] for row in rows]
    print(f"preset {args.preset}, {args.device}, {args.threads} threads, {len(rows)} studies")
    print(f"median latency: {statistics.median(r['latency_s'] for r in rows):.2f} s")
    print(f"median model compute: {statistics.median(r['model_compute_s'] for r in rows):.2f} s")
    print(f"ratio latency / model compute: {statistics.median(ratios):.2f} (target 1.3 or lower)")
    # ru_maxrss is in KiB on Linux: the node, its model and every study analysed.
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of the node process: {peak_mib:.0f} MiB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
