"""Orthanc as the PACS: auto-routing to the node, results in the same study, no routing loop.

Orthanc, the node and every client run in a network namespace with only
loopback (see peers.py). The model bundle has random weights (see
worker_helpers): the test checks the flow, not the classes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from peers import (
    Namespace,
    NodeProcess,
    OrthancProcess,
    peers_available,
    validation_errors,
    wait_for,
)
from worker_helpers import node_settings, sample_study, untrained_bundle_dir

from hipfuse.node.demo import study_latency
from hipfuse.node.jobstore import JobStore
from hipfuse.node.states import JobKind, SkipReason

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(peers_available() is not None, reason=str(peers_available())),
]

NODE_PORT = 11112
ORTHANC_DICOM_PORT = 4242


def loop_settled(data_dir: Path, study_uid: str) -> bool:
    """Whether the study came back from Orthanc after its results and was skipped."""
    with JobStore.in_data_dir(data_dir) as store:
        events = [(event.event, event.details) for event in store.list_events(study_uid, 1000)]
    names = [name for name, _ in events]
    if "study_done" not in names:
        return False
    after_done = events[names.index("study_done") + 1 :]
    return any(
        name == "study_skipped" and details.get("reason") == SkipReason.ALREADY_ANALYSED
        for name, details in after_done
    )


def test_orthanc_routes_and_stores_results(tmp_path: Path) -> None:
    study = sample_study()
    uid = study.study_instance_uid
    config, settings = node_settings(
        tmp_path,
        port=NODE_PORT,
        destinations=[("pacs", "ORTHANC", ORTHANC_DICOM_PORT)],
        callers=("ORTHANC", "ECHOSCU"),
        quiet_period_s=1.0,
    )
    data_dir = settings.storage.data_dir

    with Namespace() as namespace:
        node = NodeProcess(namespace, config, untrained_bundle_dir(), tmp_path / "node.log")
        node.start()
        orthanc = OrthancProcess(
            namespace, tmp_path / "orthanc", node_port=NODE_PORT, dicom_port=ORTHANC_DICOM_PORT
        ).start()

        orthanc.upload(study.files)
        # Routed in, analysed, results stored in Orthanc, which makes the study
        # stable again and routes it back, and the node skips it.
        wait_for(lambda: loop_settled(data_dir, uid), 240, "the routing loop to settle")

        series = orthanc.series_of_study(uid)
        by_modality: dict[str, list[dict]] = {}
        for item in series:
            by_modality.setdefault(item["MainDicomTags"]["Modality"], []).append(item)
        assert len(orthanc.get("/studies")) == 1
        assert sorted(by_modality) == ["CT", "DX", "OT", "SR"]
        assert len(by_modality["SR"]) == 1
        assert len(by_modality["SR"][0]["Instances"]) == 1
        assert len(by_modality["OT"]) == 2
        assert sum(len(item["Instances"]) for item in by_modality["OT"]) == 8

        for item in by_modality["SR"] + by_modality["OT"]:
            for instance_id in item["Instances"]:
                path = orthanc.download(instance_id, tmp_path / f"{instance_id}.dcm")
                assert validation_errors(path) == [], path

        assert node.stop() == 0

    with JobStore.in_data_dir(data_dir) as store:
        analyses = [job for job in store.list_jobs(uid) if job.kind == JobKind.ANALYSE]
        latency = study_latency(store, uid)
    assert len(analyses) == 1
    assert latency is not None
    print(
        "study latency (last instance received -> SR stored in Orthanc): "
        + ", ".join(f"{name} {value:.3f}" for name, value in latency.items())
        + ", quiet_period_s 1.0"
    )
