"""Ingest benchmark: C-STORE of a 300-slice CT to the node's SCP versus DCMTK storescp.

Sends 300 CT slices of 512 x 512 int16 (about 157 MB, Explicit VR Little Endian)
with DCMTK ``storescu`` (``TCP_NODELAY=1``, ``--max-pdu 131072``) to

* DCMTK ``storescp`` with the same options, the reference receiver, which
  writes files without fsync, and
* the node's SCP, which fsyncs each file and its folder and commits the
  instance's job store record before it responds.

Both receivers and the sender run inside a network namespace of their own
(loopback only), each receiver afresh for each run with an empty output
folder. Prints the median seconds of each and one figure, the ratio
node / DCMTK (lower is better, 1.0 is parity).

Needs root (``ip netns``) and Debian's ``dcmtk``. Usage::

    python bench/bench_ingest.py [--runs 3] [--slices 300]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ECHOSCU = "/usr/bin/echoscu"
DCMTK_PORT = 11198
NODE_PORT = 11199
SENDER_ENV = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}


def write_ct(folder: Path, slices: int) -> list[Path]:
    """Write a synthetic CT series, one 512 x 512 int16 slice per file."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    pixels = np.random.default_rng(0).integers(-1000, 2000, (512, 512)).astype(np.int16)
    paths = []
    for index in range(slices):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.BodyPartExamined = "CT", "BENCH", "PELVIS"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SliceThickness, ds.ConvolutionKernel = "1", "BONE"
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [0, 0, -index]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.Rows = ds.Columns = 512
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 15, 1, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = pixels.tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = folder / f"ct{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


class Namespace:
    """A network namespace with only loopback, deleted on exit."""

    def __init__(self) -> None:
        self.name = f"hipfuse-bench-{os.getpid()}"

    def __enter__(self) -> Namespace:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run(["ip", "link", "set", "lo", "up"], check=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False)

    def command(self, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
        prefix = ["ip", "netns", "exec", self.name]
        if env:
            prefix += ["env", *[f"{key}={value}" for key, value in env.items()]]
        return prefix + argv

    def run(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.command(argv), **kwargs)  # type: ignore[call-overload]

    def start(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as output:
            return subprocess.Popen(
                self.command(argv, env), stdout=output, stderr=subprocess.STDOUT
            )


def wait_for_echo(namespace: Namespace, port: int, timeout_s: float = 60.0) -> None:
    """Wait until a C-ECHO to 127.0.0.1:port succeeds inside the namespace."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = namespace.run(
            [ECHOSCU, "-aet", "BENCH", "127.0.0.1", str(port)], capture_output=True
        )
        if result.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(
        f"no C-ECHO response on port {port} within {timeout_s} s; see the receiver log"
    )


def send(namespace: Namespace, port: int, files: list[Path]) -> float:
    """Send the files with storescu inside the namespace; return the wall time in seconds."""
    argv = [STORESCU, "-aet", "BENCH", "--max-pdu", "131072", "127.0.0.1", str(port)]
    started = time.perf_counter()
    result = subprocess.run(
        namespace.command(argv + [str(path) for path in files], SENDER_ENV), capture_output=True
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def time_receiver(
    namespace: Namespace, files: list[Path], work: Path, runs: int, kind: str
) -> list[float]:
    """Start a fresh receiver per run, send the series, and return the send times."""
    times = []
    for run in range(runs):
        out = work / f"{kind}-{run}"
        out.mkdir()
        if kind == "dcmtk":
            argv = [STORESCP, "--max-pdu", "131072", "-od", str(out), str(DCMTK_PORT)]
            env, port = {"TCP_NODELAY": "1"}, DCMTK_PORT
        else:
            argv = [sys.executable, __file__, "--serve", str(out)]
            env, port = {"PATH": os.environ.get("PATH", "")}, NODE_PORT
        receiver = namespace.start(argv, env, work / f"{kind}.log")
        try:
            wait_for_echo(namespace, port)
            times.append(send(namespace, port, files))
        finally:
            stop(receiver)
        stored = len(list(out.rglob("*.dcm"))) if kind == "node" else len(list(out.iterdir()))
        if stored != len(files):
            raise RuntimeError(f"{kind} stored {stored} of {len(files)} files; see {work}")
        shutil.rmtree(out)
    return times


def serve(data_dir: Path) -> None:
    """Run the node's SCP on 127.0.0.1:NODE_PORT until SIGTERM (used inside the namespace)."""
    from hipfuse.config.settings import load_settings
    from hipfuse.node.jobstore import JobStore
    from hipfuse.node.scp import start_scp
    from hipfuse.node.spool import Spool

    os.environ.update(
        {
            "HIPFUSE_NODE__PORT": str(NODE_PORT),
            "HIPFUSE_NODE__ALLOWED_CALLERS": '[{"ae_title": "BENCH"}]',
            "HIPFUSE_STORAGE__DATA_DIR": str(data_dir),
            "HIPFUSE_STORAGE__MIN_FREE_BYTES": "1",
        }
    )
    settings = load_settings()
    # As NodeService opens the SCP's connection: commits unsynced, the spool synced.
    jobstore = JobStore.in_data_dir(data_dir, durable_commits=False)
    server = start_scp(settings, jobstore, Spool(data_dir))
    stopped = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, on_term)
    while not stopped:
        time.sleep(0.1)
    server.stop()
    jobstore.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per receiver (default: 3)")
    parser.add_argument("--slices", type=int, default=300, help="CT slices (default: 300)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if os.geteuid() != 0 or not shutil.which("ip"):
        sys.exit("bench_ingest needs root and iproute2 (ip netns) to isolate loopback")
    for tool in (STORESCU, STORESCP, ECHOSCU):
        if not Path(tool).exists():
            sys.exit(f"{tool} is missing: apt-get install dcmtk")

    with tempfile.TemporaryDirectory(prefix="hipfuse-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        files = write_ct(work / "ct", args.slices)
        megabytes = sum(path.stat().st_size for path in files) / 1e6
        with Namespace() as namespace:
            dcmtk = time_receiver(namespace, files, work, args.runs, "dcmtk")
            node = time_receiver(namespace, files, work, args.runs, "node")
    dcmtk_s, node_s = statistics.median(dcmtk), statistics.median(node)
    print(f"series: {args.slices} slices, {megabytes:.0f} MB")
    print(f"dcmtk storescp: median {dcmtk_s:.2f} s, runs {[round(t, 2) for t in dcmtk]}")
    print(f"hipfuse scp:    median {node_s:.2f} s, runs {[round(t, 2) for t in node]}")
    print(f"ratio node/dcmtk: {node_s / dcmtk_s:.2f}")


if __name__ == "__main__":
    main()
