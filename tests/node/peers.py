"""Real DICOM peers for the end-to-end tests, each run in a network namespace.

Orthanc 1.10 (Debian) and DCMTK 3.6.7's storescp cannot bind to one address:
they listen on every interface. The tests therefore create a network namespace
that has only loopback (``ip netns add``), and run the servers, the node and
every client inside it with ``ip netns exec``. Nothing is reachable from
outside. Processes are stopped by PID and the namespace is deleted at teardown.
This needs root, as in CI.

The node runs as ``python -m hipfuse.node.cli run`` with JSON log lines in a
file. Orthanc's REST API is called with curl inside the namespace.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pydicom

ORTHANC = "/usr/sbin/Orthanc"
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ECHOSCU = "/usr/bin/echoscu"
CURL = "/usr/bin/curl"
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
# DCMTK 3.6.7 leaves Nagle's algorithm on unless this is in its environment.
DCMTK_ENV = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}

_counter = itertools.count()


def peers_available() -> str | None:
    """Return why the peer tests cannot run here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("/usr/sbin/ip", ORTHANC, STORESCU, STORESCP, ECHOSCU, CURL):
        if not Path(tool).exists():
            return f"{tool} is not installed"
    return None


def wait_for(
    condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2
) -> Any:
    """Poll ``condition`` until it returns a true value; fail naming ``what`` on time-out."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class Namespace:
    """A network namespace with only loopback, named after this process."""

    def __init__(self) -> None:
        self.name = f"hipfuse-test-{os.getpid()}-{next(_counter)}"
        self._processes: list[subprocess.Popen] = []

    def __enter__(self) -> Namespace:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run(["ip", "link", "set", "lo", "up"], check=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process in reversed(self._processes):
            stop_process(process)
        subprocess.run(["ip", "netns", "del", self.name], check=False)

    def command(self, args: Sequence[str | Path]) -> list[str]:
        """Return ``args`` wrapped in ``ip netns exec``, which execs them in place."""
        return ["ip", "netns", "exec", self.name, *map(str, args)]

    def run(self, args: Sequence[str | Path], **kwargs: Any) -> subprocess.CompletedProcess:
        """Run a command inside the namespace and wait for it."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 120)
        return subprocess.run(self.command(args), **kwargs)

    def start(self, args: Sequence[str | Path], **kwargs: Any) -> subprocess.Popen:
        """Start a command inside the namespace; it is stopped at teardown."""
        process = subprocess.Popen(self.command(args), **kwargs)
        self._processes.append(process)
        return process


def stop_process(process: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """Stop a child by its PID: SIGTERM, then SIGKILL after ``timeout_s``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def echo(namespace: Namespace, port: int, called: str, calling: str = "ECHOSCU") -> bool:
    """Return whether a C-ECHO to ``called`` on 127.0.0.1:``port`` succeeds."""
    result = namespace.run(
        [ECHOSCU, "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        env=DCMTK_ENV,
        timeout=30,
    )
    return result.returncode == 0


def storescu(
    namespace: Namespace, port: int, files: Sequence[Path], *, calling: str = "STORESCU"
) -> subprocess.CompletedProcess:
    """Send files to the node with DCMTK storescu (JPEG 2000 proposed for the radiograph)."""
    return namespace.run(
        [STORESCU, "-aet", calling, "-aec", "HIPFUSE", "-R", "-xw", "127.0.0.1", str(port), *files],
        env=DCMTK_ENV,
        timeout=300,
    )


class NodeProcess:
    """``hipfuse-node run`` inside the namespace, logging JSON lines to a file."""

    def __init__(self, namespace: Namespace, config: Path, bundle_dir: Path, log_path: Path):
        self.namespace = namespace
        self.config = config
        self.bundle_dir = bundle_dir
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> NodeProcess:
        """Start the node and wait for its ``node_started`` log line."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("a") as log:
            self.process = self.namespace.start(
                [
                    sys.executable,
                    "-m",
                    "hipfuse.node.cli",
                    "run",
                    "--config",
                    self.config,
                    "--bundle",
                    self.bundle_dir,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
            )

        def started() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the node exited at start:\n{self.log_path.read_text()}")
            return any(event["event"] == "node_started" for event in self.events(offset))

        wait_for(started, timeout_s, "the node to start")
        return self

    def kill(self) -> None:
        """SIGKILL the node by its PID, as a power cut would stop it."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> int:
        """SIGTERM the node by its PID; return its exit status."""
        assert self.process is not None
        stop_process(self.process, timeout_s=60)
        return self.process.returncode

    def events(self, offset: int = 0) -> list[dict[str, Any]]:
        """Return the node's JSON log lines written after byte ``offset``."""
        if not self.log_path.exists():
            return []
        with self.log_path.open() as log:
            log.seek(offset)
            lines = log.read().splitlines()
        events = []
        for line in lines:
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:  # a line still being written
                    continue
        return events


class StorescpProcess:
    """DCMTK storescp as a destination, filing received objects into ``out_dir``."""

    def __init__(self, namespace: Namespace, out_dir: Path, port: int, ae_title: str = "STORESCP"):
        self.namespace = namespace
        self.out_dir = out_dir
        self.port = port
        self.ae_title = ae_title
        self.process: subprocess.Popen | None = None

    def start(self) -> StorescpProcess:
        """Start storescp and wait until a C-ECHO to it succeeds."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.process = self.namespace.start(
            [STORESCP, "-aet", self.ae_title, "-od", self.out_dir, str(self.port)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: echo(self.namespace, self.port, self.ae_title), 30, "storescp")
        return self

    def stop(self) -> None:
        """Stop storescp by its PID."""
        if self.process is not None:
            stop_process(self.process)

    def received(self) -> list[Path]:
        """Return the files received so far."""
        return sorted(path for path in self.out_dir.rglob("*") if path.is_file())


class OrthancProcess:
    """Orthanc as the PACS, auto-routing every stable study to the node."""

    def __init__(
        self,
        namespace: Namespace,
        workdir: Path,
        *,
        node_port: int,
        dicom_port: int = 4242,
        http_port: int = 8042,
        stable_age_s: int = 2,
    ) -> None:
        self.namespace = namespace
        self.workdir = workdir
        self.node_port = node_port
        self.dicom_port = dicom_port
        self.http_port = http_port
        self.stable_age_s = stable_age_s
        self.process: subprocess.Popen | None = None

    def start(self) -> OrthancProcess:
        """Write the configuration and Lua routing script, start Orthanc, wait for REST."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        lua = self.workdir / "route.lua"
        # A stable study goes to the node; Orthanc's own REST route stores a whole study.
        lua.write_text(
            textwrap.dedent(
                """
                function OnStableStudy(studyId, tags, metadata)
                  RestApiPost('/modalities/hipfuse/store', studyId)
                end
                """
            )
        )
        config = {
            "Name": "hipfuse-test-pacs",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "Plugins": [],
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAet": "ORTHANC",
            "DicomPort": self.dicom_port,
            "DicomModalities": {"hipfuse": ["HIPFUSE", "127.0.0.1", self.node_port]},
            "StableAge": self.stable_age_s,
            "LuaScripts": [str(lua)],
        }
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        with (self.workdir / "orthanc.log").open("w") as log:
            self.process = self.namespace.start(
                [ORTHANC, config_path], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(lambda: self._ping(), 30, "Orthanc's REST API")
        return self

    def _ping(self) -> bool:
        result = self.namespace.run([CURL, "-sf", f"{self._url}/system"], timeout=10)
        return result.returncode == 0

    @property
    def _url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        """Stop Orthanc by its PID."""
        if self.process is not None:
            stop_process(self.process)

    def get(self, path: str) -> Any:
        """GET a REST resource and return the decoded JSON."""
        result = self.namespace.run([CURL, "-sf", f"{self._url}{path}"], timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"GET {path} failed (curl exit {result.returncode})")
        return json.loads(result.stdout)

    def upload(self, files: Sequence[Path]) -> None:
        """Store files in Orthanc with ``POST /instances``, as a modality upload would."""
        for path in files:
            result = self.namespace.run(
                [CURL, "-sf", "-X", "POST", "--data-binary", f"@{path}", f"{self._url}/instances"],
                timeout=30,
            )
            if result.returncode != 0:
                raise RuntimeError(f"upload of {path} failed (curl exit {result.returncode})")

    def download(self, instance_id: str, path: Path) -> Path:
        """Save one stored instance as a DICOM file."""
        self.namespace.run(
            [CURL, "-sf", "-o", path, f"{self._url}/instances/{instance_id}/file"],
            check=True,
            timeout=30,
        )
        return path

    def series_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """Return the series of the study with that Study Instance UID."""
        matches = [
            study
            for study in self.get("/studies?expand")
            if study["MainDicomTags"]["StudyInstanceUID"] == study_uid
        ]
        if not matches:
            return []
        return self.get(f"/studies/{matches[0]['ID']}/series")


def sop_class_of(path: Path) -> str:
    """Return the SOP Class UID of a DICOM file."""
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID)


def validation_errors(path: Path) -> list[str]:
    """Return the ``Error`` lines that dciodvfy reports for a file."""
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]
