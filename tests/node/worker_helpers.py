"""Helpers for the worker, outbox, sender and CLI tests: a model bundle, a study, ingest.

The bundle has random weights (``build_untrained_bundle`` of the demo preset):
its probabilities mean nothing, which is fine for tests of the plumbing.
The study is the sample pelvis radiograph and CT as ``hipfuse-node demo``
prepares it. Each is built once per test process.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hipfuse.config.settings import Settings, StudySettings, load_settings
from hipfuse.node.assembly import StudyAssembler
from hipfuse.node.demo import SampleStudy, find_samples_dir, prepare_sample_study
from hipfuse.node.header import read_header
from hipfuse.node.jobstore import InstanceRecord, JobStore
from hipfuse.node.outbox import OutboxFolder
from hipfuse.node.series import is_node_output
from hipfuse.node.spool import InstanceUIDs, Spool


def _temp_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def untrained_bundle_dir() -> Path:
    """Save a demo-preset bundle with seeded random weights; return its folder."""
    from hipfuse.inference.model.bundle import build_untrained_bundle, save_bundle
    from hipfuse.inference.model.config import IntendedUse, ModelPreset, make_bundle_config

    config = make_bundle_config(
        ModelPreset.DEMO,
        name="hipfuse-test-untrained",
        version="0.0.1",
        intended_use=IntendedUse.DEMO,
    )
    bundle = build_untrained_bundle(config, seed=0, device="cpu")
    return save_bundle(bundle.model, bundle.config, _temp_dir("hipfuse-bundle-") / "bundle")


@functools.cache
def loaded_bundle() -> Any:
    """Load :func:`untrained_bundle_dir` on the CPU, as the service does."""
    from hipfuse.inference.model.bundle import load_bundle

    return load_bundle(untrained_bundle_dir(), device="cpu")


@functools.cache
def sample_study() -> SampleStudy:
    """Write the sample radiograph and CT as one DICOM study (a new study UID)."""
    return prepare_sample_study(find_samples_dir(), _temp_dir("hipfuse-study-"))


@functools.cache
def sample_result() -> Any:
    """Analyse :func:`sample_study` once with :func:`loaded_bundle`; return the StudyResult."""
    from hipfuse.inference.pipeline import analyze_study, read_inputs

    study = sample_study()
    inputs = read_inputs(study.radiograph, study.radiograph.parent / "ct")
    return analyze_study(loaded_bundle(), inputs)


class FakeClock:
    """A clock that moves only when advanced."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def ingest(
    jobstore: JobStore,
    spool: Spool,
    paths: Sequence[Path],
    received_at: float,
    *,
    calling_ae_title: str = "STORESCU",
) -> list[InstanceRecord]:
    """Spool and record files as the SCP does after a C-STORE, without the network."""
    records = []
    for path in paths:
        data = Path(path).read_bytes()
        header = read_header(data)
        uids = InstanceUIDs.validated(
            header.get("StudyInstanceUID"),
            header.get("SeriesInstanceUID"),
            header.get("SOPInstanceUID"),
        )
        spooled = spool.store_instance(uids, [data])
        record = InstanceRecord(
            sop_instance_uid=uids.sop_instance_uid,
            sop_class_uid=header.get("SOPClassUID"),
            study_instance_uid=uids.study_instance_uid,
            series_instance_uid=uids.series_instance_uid,
            path=spooled.path,
            size_bytes=spooled.size_bytes,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            received_at=received_at,
            calling_ae_title=calling_ae_title,
            peer_address="127.0.0.1",
            header=header.attributes,
            is_node_output=is_node_output(header.attributes),
        )
        jobstore.record_instance(record)
        records.append(record)
    return records


@dataclass
class CompleteStudy:
    """A data folder whose job store has the sample study assembled and ``complete``."""

    jobstore: JobStore
    spool: Spool
    outbox: OutboxFolder
    clock: FakeClock
    study: SampleStudy

    @property
    def uid(self) -> str:
        return self.study.study_instance_uid


def complete_sample_study(data_dir: Path) -> CompleteStudy:
    """Spool and record the sample study, then let the quiet period pass and assemble it."""
    clock = FakeClock()
    jobstore = JobStore.in_data_dir(data_dir, clock=clock)
    spool = Spool(data_dir)
    spool.prepare()
    outbox = OutboxFolder(data_dir)
    outbox.prepare()
    study = sample_study()
    ingest(jobstore, spool, study.files, clock.now)
    clock.advance(60.0)
    StudyAssembler(jobstore, StudySettings(quiet_period_s=30.0), clock=clock).run_once()
    return CompleteStudy(jobstore, spool, outbox, clock, study)


def node_settings(
    tmp_path: Path,
    *,
    port: int = 11112,
    destinations: Sequence[tuple[str, str, int]] = (("pacs", "PACS", 11113),),
    callers: Sequence[str] = ("STORESCU", "ECHOSCU"),
    quiet_period_s: float = 1.0,
    send: str = "max_attempts = 3\nbackoff_initial_s = 1.0\nbackoff_max_s = 4.0",
    http: str = "port = 0",
    extra: str = "",
) -> tuple[Path, Settings]:
    """Write a node settings file into ``tmp_path``; return its path and the settings.

    ``http`` is the body of the ``[http]`` table: by default port 0, so nodes
    in concurrent tests never compete for the shipped port.
    """
    caller_tables = ", ".join(f'{{ ae_title = "{title}" }}' for title in callers)
    destination_tables = "\n".join(
        textwrap.dedent(
            f"""
            [[destinations]]
            name = "{name}"
            ae_title = "{ae_title}"
            host = "127.0.0.1"
            port = {dest_port}
            """
        )
        for name, ae_title, dest_port in destinations
    )
    text = (
        textwrap.dedent(
            f"""
            [node]
            ae_title = "HIPFUSE"
            port = {port}
            allowed_callers = [{caller_tables}]
            acse_timeout_s = 5.0
            dimse_timeout_s = 20.0
            network_timeout_s = 20.0
            """
        )
        + destination_tables
        + textwrap.dedent(
            f"""
            [study]
            quiet_period_s = {quiet_period_s}

            [storage]
            data_dir = "{tmp_path / "data"}"
            min_free_bytes = 1

            [send]
            """
        )
        + send
        + f"\n\n[http]\n{http}\n"
        + "\n[logging]\njson = true\n"
        + extra
    )
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path, load_settings(path)
