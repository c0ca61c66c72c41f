"""DCMTK storescu as an independent sender and storescp as the destination.

Two failures a node must survive: being killed in the middle of a transfer,
and a destination that is down when the results are ready. The servers, the
node and the clients run in a network namespace with only loopback (see
peers.py). The model bundle has random weights (see worker_helpers).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from peers import (
    DCMTK_ENV,
    SC_CLASS,
    SR_CLASS_PREFIX,
    STORESCU,
    Namespace,
    NodeProcess,
    StorescpProcess,
    peers_available,
    sop_class_of,
    storescu,
    validation_errors,
    wait_for,
)
from worker_helpers import node_settings, sample_study, untrained_bundle_dir

from hipfuse.node.jobstore import JobStore
from hipfuse.node.states import JobState, StudyState

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(peers_available() is not None, reason=str(peers_available())),
]

NODE_PORT = 11112
DESTINATION_PORT = 11113
# Instances acknowledged before the node is killed.
KILL_AFTER = 30


def study_state(data_dir: Path, study_uid: str) -> StudyState | None:
    with JobStore.in_data_dir(data_dir) as store:
        try:
            return store.get_study(study_uid).state
        except KeyError:
            return None


def check_results(destination: StorescpProcess) -> None:
    """Exactly one SR and eight Secondary Captures arrived, each valid by dciodvfy."""
    files = destination.received()
    classes = [sop_class_of(path) for path in files]
    assert sum(uid.startswith(SR_CLASS_PREFIX) for uid in classes) == 1
    assert classes.count(SC_CLASS) == 8
    assert len(files) == 9
    for path in files:
        assert validation_errors(path) == [], path


def test_node_killed_mid_transfer(tmp_path: Path) -> None:
    study = sample_study()
    uid = study.study_instance_uid
    # The quiet period outlasts the restart, so the half-received study is
    # not analysed before the rest arrives. Loading the model on a busy
    # 2-core machine has taken more than 10 s.
    config, settings = node_settings(
        tmp_path,
        port=NODE_PORT,
        destinations=[("pacs", "STORESCP", DESTINATION_PORT)],
        quiet_period_s=30.0,
    )
    data_dir = settings.storage.data_dir

    with Namespace() as namespace:
        destination = StorescpProcess(namespace, tmp_path / "received", DESTINATION_PORT).start()
        node = NodeProcess(namespace, config, untrained_bundle_dir(), tmp_path / "node.log")
        node.start()

        sender = namespace.start(
            [
                STORESCU,
                "-v",
                "-aet",
                "STORESCU",
                "-aec",
                "HIPFUSE",
                "127.0.0.1",
                NODE_PORT,
                *study.ct_slices,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=DCMTK_ENV,
        )
        acknowledged: list[Path] = []
        current = None
        assert sender.stdout is not None
        for line in sender.stdout:
            if "Sending file:" in line:
                current = Path(line.split("Sending file:", 1)[1].strip())
            elif "Received Store Response (Success)" in line:
                acknowledged.append(current)
                if len(acknowledged) == KILL_AFTER:
                    node.kill()
        assert sender.wait(timeout=60) != 0
        assert KILL_AFTER <= len(acknowledged) < len(study.ct_slices)

        with JobStore.in_data_dir(data_dir) as store:
            stored = {item.sop_instance_uid: item for item in store.list_instances(uid)}
        for path in acknowledged:
            sent = pydicom.dcmread(path)
            assert sent.SOPInstanceUID in stored, path
            spooled = pydicom.dcmread(stored[sent.SOPInstanceUID].path)
            assert spooled.SOPInstanceUID == sent.SOPInstanceUID
            assert np.array_equal(spooled.pixel_array, sent.pixel_array), path

        node.start()
        sent = storescu(namespace, NODE_PORT, study.files)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_for(lambda: study_state(data_dir, uid) is StudyState.DONE, 180, "the SR to be sent")
        assert node.stop() == 0
        destination.stop()

    check_results(destination)
    with JobStore.in_data_dir(data_dir) as store:
        assert store.get_study(uid).instance_count == len(study.files)


def node_status(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hipfuse.node.cli", "status", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_destination_down_keeps_results_queued(tmp_path: Path) -> None:
    study = sample_study()
    uid = study.study_instance_uid
    config, settings = node_settings(
        tmp_path,
        port=NODE_PORT,
        destinations=[("pacs", "STORESCP", DESTINATION_PORT)],
        quiet_period_s=1.0,
        send="max_attempts = 100\nbackoff_initial_s = 0.5\nbackoff_max_s = 1.0",
    )
    data_dir = settings.storage.data_dir

    with Namespace() as namespace:
        node = NodeProcess(namespace, config, untrained_bundle_dir(), tmp_path / "node.log")
        node.start()
        sent = storescu(namespace, NODE_PORT, study.files)
        assert sent.returncode == 0, sent.stdout + sent.stderr

        def retried() -> bool:
            with JobStore.in_data_dir(data_dir) as store:
                items = store.list_outbox(study_uid=uid)
            return len(items) == 9 and all(item.attempts >= 2 for item in items)

        wait_for(retried, 120, "the results to be tried twice")
        status = json.loads(node_status(config, "--json").stdout)
        pacs = status["outbox"][0]
        assert pacs["destination"] == "pacs"
        assert pacs["counts"]["pending"] + pacs["counts"]["running"] == 9
        assert pacs["counts"]["succeeded"] == 0
        assert status["queue"][0]["state"] == "sending"
        text = node_status(config).stdout
        assert "last error: STORESCP@127.0.0.1:11113 could not be reached" in text

        destination = StorescpProcess(namespace, tmp_path / "received", DESTINATION_PORT).start()
        wait_for(lambda: study_state(data_dir, uid) is StudyState.DONE, 60, "the results to go")
        assert node.stop() == 0
        destination.stop()

    check_results(destination)
    assert "pacs: 0 pending, 0 sending, 9 sent, 0 failed" in node_status(config).stdout
    with JobStore.in_data_dir(data_dir) as store:
        items = store.list_outbox(study_uid=uid)
    assert {item.state for item in items} == {JobState.SUCCEEDED}
