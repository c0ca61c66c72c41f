"""Bundle hot swap: a new bundle serves from the next study; a bad one is rejected.

The bundles are the untrained test bundle (version 0.0.1) and a second one with
other seeded weights (version 0.0.2); see worker_helpers. The studies are the
sample radiograph alone, with new UIDs per study, which keeps each real
analysis to a second or two.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import structlog
from pydicom.uid import generate_uid
from worker_helpers import FakeClock, ingest, untrained_bundle_dir

from hipfuse.config.settings import StudySettings
from hipfuse.inference.model.bundle import load_bundle
from hipfuse.node.assembly import StudyAssembler
from hipfuse.node.bundle_watch import BundleWatcher, SwapResult
from hipfuse.node.demo import SAMPLE_RADIOGRAPH, find_samples_dir
from hipfuse.node.jobstore import JobStore
from hipfuse.node.outbox import OutboxFolder
from hipfuse.node.spool import Spool
from hipfuse.node.states import StudyState
from hipfuse.node.worker import AnalysisWorker

SETTLE_S = 5.0
ALGORITHM_VERSION = ("111003", "DCM")
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


@functools.cache
def second_bundle_dir() -> Path:
    """Save a bundle with other weights and version 0.0.2; return its folder."""
    from hipfuse.inference.model.bundle import build_untrained_bundle, save_bundle

    first = load_bundle(untrained_bundle_dir(), device="cpu")
    config = first.config.model_copy(update={"version": "0.0.2", "weights_sha256": ""})
    bundle = build_untrained_bundle(config, seed=1, device="cpu")
    out = untrained_bundle_dir().parent / "second"
    return save_bundle(bundle.model, bundle.config, out, overwrite=True)


def swap_symlink(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` with one rename, as the deployment notes describe."""
    staging = link.with_name(link.name + ".new")
    staging.symlink_to(target)
    os.replace(staging, link)


def sr_versions(path: Path) -> set[str]:
    """Return every Algorithm Version (TID 4019) in an SR file."""
    versions = set()

    def walk(items) -> None:
        for item in items:
            name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
            if name is not None and (name.CodeValue, name.CodingSchemeDesignator) == (
                ALGORITHM_VERSION
            ):
                versions.add(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(pydicom.dcmread(path).ContentSequence)
    return versions


@dataclass
class Node:
    tmp_path: Path
    jobstore: JobStore
    spool: Spool
    outbox: OutboxFolder
    clock: FakeClock
    worker: AnalysisWorker

    def radiograph_study(self) -> str:
        """Receive and assemble a study of the sample radiograph with new UIDs."""
        ds = pydicom.dcmread(find_samples_dir() / SAMPLE_RADIOGRAPH)
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = self.tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        ingest(self.jobstore, self.spool, [path], self.clock.now)
        self.clock.advance(60.0)
        StudyAssembler(
            self.jobstore, StudySettings(quiet_period_s=30.0), clock=self.clock
        ).run_once()
        assert self.jobstore.get_study(ds.StudyInstanceUID).state is StudyState.COMPLETE
        return str(ds.StudyInstanceUID)

    def analyse_next(self) -> tuple[set[str], list[str]]:
        """Analyse the next study; return its SR's algorithm versions and SC descriptions."""
        outcome = self.worker.run_once()
        assert outcome is not None and outcome.state is StudyState.SENDING, outcome
        datasets = [pydicom.dcmread(item.path) for item in outcome.objects]
        (sr_path,) = [
            item.path
            for item, ds in zip(outcome.objects, datasets, strict=True)
            if ds.SOPClassUID != SC_CLASS
        ]
        captures = [str(ds.DerivationDescription) for ds in datasets if ds.SOPClassUID == SC_CLASS]
        return sr_versions(sr_path), captures


def make_node(tmp_path: Path, bundle_dir: Path) -> Node:
    clock = FakeClock()
    data_dir = tmp_path / "data"
    jobstore = JobStore.in_data_dir(data_dir, clock=clock)
    spool = Spool(data_dir)
    spool.prepare()
    outbox = OutboxFolder(data_dir)
    outbox.prepare()
    from hipfuse.inference.pipeline import analyze_study

    bundle = load_bundle(bundle_dir, device="cpu")
    worker = AnalysisWorker(
        jobstore,
        outbox,
        analyze=functools.partial(analyze_study, bundle),
        bundle_config=bundle.config,
        destinations=["pacs"],
        clock=clock,
    )
    return Node(tmp_path, jobstore, spool, outbox, clock, worker)


@pytest.fixture
def bundles(tmp_path: Path) -> Path:
    """Deploy the first bundle as ``bundles/v1`` with the link ``bundles/current`` to it."""
    folder = tmp_path / "bundles"
    folder.mkdir()
    shutil.copytree(untrained_bundle_dir(), folder / "v1")
    (folder / "current").symlink_to("v1")
    return folder


@pytest.fixture
def node(tmp_path: Path, bundles: Path) -> Iterator[Node]:
    node = make_node(tmp_path, bundles / "current")
    yield node
    node.jobstore.close()


def test_swap_waits_for_study_in_analysis(node: Node, bundles: Path) -> None:
    clock = FakeClock()
    current = bundles / "current"
    watcher = BundleWatcher(
        current,
        node.worker,
        node.worker.bundle_config,
        device="cpu",
        settle_s=SETTLE_S,
        clock=clock,
    )
    shutil.copytree(second_bundle_dir(), bundles / "v2")
    serving_analyze = node.worker.analyze
    swaps = []

    def analyze_while_swapping(inputs):
        # The new bundle is deployed, settles and loads while this study is analysed.
        swap_symlink(current, Path("v2"))
        swaps.append(watcher.check())
        clock.advance(SETTLE_S)
        swaps.append(watcher.check())
        return serving_analyze(inputs)

    node.worker.analyze = analyze_while_swapping
    reported = []
    node.worker.on_bundle_swapped = reported.append
    node.radiograph_study()
    with structlog.testing.capture_logs() as logs:
        first_versions, first_captures = node.analyse_next()
    reported_after_first = list(reported)
    node.radiograph_study()
    second_versions, second_captures = node.analyse_next()

    assert swaps == [SwapResult.SETTLING, SwapResult.SWAPPED]
    # The health check and metrics hear of the new bundle when it starts serving.
    assert reported_after_first == []
    assert [config.version for config in reported] == ["0.0.2"]
    assert first_versions == {"0.0.1"}
    assert first_captures and all("hipfuse-test-untrained 0.0.1" in c for c in first_captures)
    assert second_versions == {"0.0.2"}
    assert second_captures and all("hipfuse-test-untrained 0.0.2" in c for c in second_captures)
    scheduled = [entry for entry in logs if entry["event"] == "bundle_swap_scheduled"]
    assert [(e["version"], e["previous_version"]) for e in scheduled] == [("0.0.2", "0.0.1")]


def test_corrupted_bundle_rejected_old_serves(node: Node, bundles: Path) -> None:
    clock = FakeClock()
    current = bundles / "current"
    watcher = BundleWatcher(
        current,
        node.worker,
        node.worker.bundle_config,
        device="cpu",
        settle_s=SETTLE_S,
        clock=clock,
    )
    # A copy over the old files that stopped half-way: new bundle.json, half the weights.
    weights = (second_bundle_dir() / "weights.safetensors").read_bytes()
    shutil.copy(second_bundle_dir() / "bundle.json", current / "bundle.json")
    (current / "weights.safetensors").write_bytes(weights[: len(weights) // 2])

    assert watcher.check() is SwapResult.SETTLING
    clock.advance(SETTLE_S)
    with structlog.testing.capture_logs() as logs:
        assert watcher.check() is SwapResult.REJECTED
    clock.advance(SETTLE_S)
    # The same files are not loaded again.
    assert watcher.check() is SwapResult.NO_CHANGE

    rejected = [entry for entry in logs if entry["event"] == "bundle_rejected"]
    assert [entry["error_code"] for entry in rejected] == ["bundle_weights_checksum"]
    assert rejected[0]["serving_version"] == "0.0.1"
    node.radiograph_study()
    versions, _ = node.analyse_next()
    assert versions == {"0.0.1"}

    # The copy completes: the new bundle is loaded.
    (current / "weights.safetensors").write_bytes(weights)
    assert watcher.check() is SwapResult.SETTLING
    clock.advance(SETTLE_S)
    assert watcher.check() is SwapResult.SWAPPED


class RecordingWorker:
    """Stands in for the worker: records the bundles handed over."""

    def __init__(self) -> None:
        self.swapped: list[str] = []
        self.event = threading.Event()

    def swap_bundle(self, analyze, bundle_config) -> None:
        self.swapped.append(bundle_config.version)
        self.event.set()


def _truncate_weights(folder: Path) -> None:
    weights = folder / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _remove_config(folder: Path) -> None:
    (folder / "bundle.json").unlink()


def _break_json(folder: Path) -> None:
    config = folder / "bundle.json"
    config.write_text(config.read_text()[:-20])


def _unknown_format_version(folder: Path) -> None:
    config = folder / "bundle.json"
    values = json.loads(config.read_text())
    values["format_version"] = 99
    config.write_text(json.dumps(values))


def _nan_weights(folder: Path) -> None:
    """Fill the classifier with NaN and record the new checksum, so only the forward pass fails."""
    import torch
    from safetensors.torch import load_file, save_file

    from hipfuse.inference.model.text import sha256_file

    weights = folder / "weights.safetensors"
    tensors = load_file(str(weights))
    tensors["classifier.weight"] = torch.full_like(tensors["classifier.weight"], float("nan"))
    save_file(tensors, str(weights), metadata={"format": "pt"})
    config = folder / "bundle.json"
    values = json.loads(config.read_text())
    values["weights_sha256"] = sha256_file(weights)
    config.write_text(json.dumps(values))


@pytest.mark.parametrize(
    ("corrupt", "code"),
    [
        (_truncate_weights, "bundle_weights_checksum"),
        (_remove_config, "bundle_file_missing"),
        (_break_json, "bundle_config_invalid"),
        (_unknown_format_version, "bundle_format_version"),
        (_nan_weights, "bundle_forward_pass_failed"),
    ],
    ids=["truncated-weights", "no-bundle-json", "invalid-json", "format-version", "nan-weights"],
)
def test_bad_bundle_rejected(bundles: Path, corrupt, code: str) -> None:
    clock = FakeClock()
    worker = RecordingWorker()
    serving = load_bundle(bundles / "v1", device="cpu").config
    watcher = BundleWatcher(
        bundles / "v1", worker, serving, device="cpu", settle_s=1.0, clock=clock
    )
    corrupt(bundles / "v1")

    watcher.check()
    clock.advance(1.0)
    with structlog.testing.capture_logs() as logs:
        result = watcher.check()

    assert result is SwapResult.REJECTED
    assert [e["error_code"] for e in logs if e["event"] == "bundle_rejected"] == [code]
    assert worker.swapped == []
    assert watcher.serving == serving


def test_bundle_changes_debounced(bundles: Path) -> None:
    clock = FakeClock()
    loads = []

    def loader(path: Path):
        loads.append(path)
        return load_bundle(path, device="cpu")

    worker = RecordingWorker()
    serving = load_bundle(bundles / "v1", device="cpu").config
    current = bundles / "current"
    watcher = BundleWatcher(current, worker, serving, settle_s=SETTLE_S, loader=loader, clock=clock)
    shutil.copytree(second_bundle_dir(), bundles / "v2")
    # A copy in place, one file per second: each write restarts the wait.
    shutil.copy(bundles / "v2" / "weights.safetensors", bundles / "v1" / "weights.safetensors")
    results = [watcher.check()]
    clock.advance(SETTLE_S - 1.0)
    shutil.copy(bundles / "v2" / "bundle.json", bundles / "v1" / "bundle.json")
    results.append(watcher.check())
    clock.advance(SETTLE_S - 1.0)
    results.append(watcher.check())
    clock.advance(1.0)
    results.append(watcher.check())

    assert results == [SwapResult.SETTLING] * 3 + [SwapResult.SWAPPED]
    assert loads == [current]
    assert worker.swapped == ["0.0.2"]


def test_bundle_reload_of_same_bundle_keeps_it(bundles: Path) -> None:
    clock = FakeClock()
    worker = RecordingWorker()
    serving = load_bundle(bundles / "v1", device="cpu").config
    watcher = BundleWatcher(bundles / "current", worker, serving, settle_s=1.0, clock=clock)
    shutil.copytree(bundles / "v1", bundles / "v1-copy")
    swap_symlink(bundles / "current", Path("v1-copy"))

    watcher.check()
    clock.advance(1.0)

    assert watcher.check() is SwapResult.UNCHANGED_BUNDLE
    assert worker.swapped == []


def test_bundle_watch_thread_swaps(bundles: Path) -> None:
    """The running watcher notices a symbolic link swap and hands the bundle over."""
    worker = RecordingWorker()
    serving = load_bundle(bundles / "v1", device="cpu").config
    watcher = BundleWatcher(
        bundles / "current", worker, serving, device="cpu", settle_s=0.2, poll_interval_s=600.0
    )
    shutil.copytree(second_bundle_dir(), bundles / "v2")
    watcher.start()
    try:
        swap_symlink(bundles / "current", Path("v2"))
        # Only the change event can wake the watcher before its 600 s poll.
        handed_over = worker.event.wait(60)
    finally:
        watcher.stop()

    assert handed_over
    assert worker.swapped == ["0.0.2"]
