"""Decide when a received study is complete and what in it is analysed.

A ``receiving`` study is complete once no instance has arrived for
``[study] quiet_period_s``, or earlier when ``complete_when_expected_series_present``
is set and it contains a hip radiograph and a hip CT series whose instance count
has reached its Images in Acquisition (0020,1002). Its series are then
classified (:mod:`hipfuse.node.series`) and the study moves to:

* ``skipped`` (``no_hip_images``) when no series can be an input,
* ``skipped`` (``already_analysed``) when the selected inputs' fingerprint was
  analysed before, so a re-sent study is not analysed twice,
* ``complete`` otherwise, with the input series recorded for the worker.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from hipfuse.config.settings import StudySettings
from hipfuse.node.jobstore import (
    JobStore,
    SeriesAssembly,
    StoredInstance,
    StudyRecord,
    input_fingerprint,
)
from hipfuse.node.metrics import NodeMetrics, StudyOutcome
from hipfuse.node.series import (
    InputRole,
    SeriesClassification,
    classify_series,
    select_inputs,
)
from hipfuse.node.states import SkipReason, StudyState
from hipfuse.node.wakeup import Wakeup

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class AssemblyOutcome:
    """Decision of the assembler for one study."""

    study_instance_uid: str
    state: StudyState
    reason: str | None
    inputs: dict[InputRole, str] = field(default_factory=dict)
    fingerprint: str | None = None
    early: bool = False
    series: tuple[SeriesClassification, ...] = ()


class StudyAssembler:
    """Completes quiet studies in the job store; call :meth:`run_once` periodically.

    Parameters
    ----------
    jobstore
        The node's job store.
    settings
        The ``[study]`` settings.
    clock
        Seconds since the epoch, used when :meth:`run_once` gets no ``now``.
    metrics
        Counts the studies skipped at assembly; ``None`` counts nothing.
    """

    def __init__(
        self,
        jobstore: JobStore,
        settings: StudySettings,
        clock: Callable[[], float] = time.time,
        wake: Wakeup | None = None,
        on_complete: Callable[[], None] | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.jobstore = jobstore
        self.settings = settings
        self.clock = clock
        self.wake = wake
        self.on_complete = on_complete
        self.metrics = metrics

    def run_once(self, now: float | None = None) -> list[AssemblyOutcome]:
        """Assemble every study that is due at ``now``; return what was decided."""
        at = self.clock() if now is None else now
        outcomes = []
        due = self.jobstore.studies_due(self.settings.quiet_period_s, at)
        for study in due:
            outcome = self.assemble(study, at)
            if outcome is not None:
                outcomes.append(outcome)
        if self.settings.complete_when_expected_series_present:
            due_uids = {study.study_instance_uid for study in due}
            for study in self.jobstore.list_studies([StudyState.RECEIVING], limit=10_000):
                if study.study_instance_uid in due_uids:
                    continue
                outcome = self.assemble(study, at, early=True)
                if outcome is not None:
                    outcomes.append(outcome)
        return outcomes

    def run(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        """Call :meth:`run_once` every ``interval_s`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                outcomes = self.run_once()
            except Exception:  # keep assembling other studies later; the error is logged
                log.exception("assembly_failed")
                outcomes = []
            if self.on_complete is not None and any(
                outcome.state is StudyState.COMPLETE for outcome in outcomes
            ):
                self.on_complete()
            if self.wake is not None:
                self.wake.wait(stop, interval_s)
            else:
                stop.wait(interval_s)

    def assemble(
        self, study: StudyRecord, now: float, *, early: bool = False
    ) -> AssemblyOutcome | None:
        """Classify one study's series and move it on.

        With ``early`` the study only moves when its expected series are all
        present. Returns ``None`` when nothing changed (not ready yet, or an
        instance arrived meanwhile).
        """
        uid = study.study_instance_uid
        classifications = classify_study(self.jobstore.list_instances(uid))
        selected = select_inputs(classifications)
        if early and not expected_series_present(selected):
            return None

        fingerprint = None
        if not selected:
            state, reason = StudyState.SKIPPED, SkipReason.NO_HIP_IMAGES.value
        else:
            fingerprint = input_fingerprint(
                sop for chosen in selected.values() for sop in chosen.sop_instance_uids
            )
            if self.jobstore.is_fingerprint_analysed(fingerprint):
                state, reason = StudyState.SKIPPED, SkipReason.ALREADY_ANALYSED.value
            else:
                state, reason = StudyState.COMPLETE, None

        roles = {chosen.series_instance_uid: role for role, chosen in selected.items()}
        series = [
            SeriesAssembly(
                series_instance_uid=c.series_instance_uid,
                classification=c.series_class.value,
                reason=c.reason,
                input_role=roles[c.series_instance_uid].value
                if c.series_instance_uid in roles
                else None,
                warnings=c.warnings,
            )
            for c in classifications
        ]
        changed = self.jobstore.finish_assembly(
            uid,
            observed_last_instance_at=study.last_instance_at,
            to_state=state,
            reason=reason,
            fingerprint=fingerprint,
            series=series,
            now=now,
        )
        if not changed:
            return None

        inputs = {role: chosen.series_instance_uid for role, chosen in selected.items()}
        fields: dict[str, Any] = {
            "study_instance_uid": uid,
            "reason": reason,
            "inputs": {role.value: series_uid for role, series_uid in inputs.items()},
            "series_count": len(classifications),
            "early": early,
        }
        warnings = sorted({w for c in selected.values() for w in c.warnings})
        if warnings:
            fields["warnings"] = warnings
        log.info(f"study_{state.value}", **fields)
        if self.metrics is not None and state is StudyState.SKIPPED:
            self.metrics.study_completed(StudyOutcome.SKIPPED)
        return AssemblyOutcome(
            study_instance_uid=uid,
            state=state,
            reason=reason,
            inputs=inputs,
            fingerprint=fingerprint,
            early=early,
            series=tuple(classifications),
        )


def classify_study(instances: list[StoredInstance]) -> list[SeriesClassification]:
    """Classify every series of a study from its instances' stored headers."""
    headers_by_series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for instance in instances:
        header = dict(instance.header)
        header.setdefault("SOPClassUID", instance.sop_class_uid)
        header.setdefault("SOPInstanceUID", instance.sop_instance_uid)
        headers_by_series[instance.series_instance_uid].append(header)
    return [classify_series(uid, headers) for uid, headers in headers_by_series.items()]


def expected_series_present(selected: dict[InputRole, SeriesClassification]) -> bool:
    """Return whether a radiograph and a CT series are selected and the CT looks whole.

    The CT counts as whole when its slice count has reached its Images in
    Acquisition value. Without that attribute the node cannot tell, so the
    study waits for the quiet period.
    """
    ct = selected.get(InputRole.CT)
    if InputRole.RADIOGRAPH not in selected or ct is None:
        return False
    return ct.images_in_acquisition is not None and ct.slice_count >= ct.images_in_acquisition
