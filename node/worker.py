"""Analysis worker: analyse complete studies and queue their SR and Secondary Captures.

For each study it claims (``complete → analysing``) the worker

1. selects the inputs again from the stored headers (:mod:`hipfuse.node.study_inputs`,
   the node's own outputs are never inputs) and checks that their fingerprint
   is the one assembly recorded and that it was not analysed before,
2. reads the radiograph and CT series from the spool, gathers the clinical
   text of the study's patient (:mod:`hipfuse.node.clinical_text`, waiting
   up to ``[hl7] text_wait_s`` for HL7 text) and runs the model,
3. encodes one Comprehensive 3D SR, with SOP Instance UIDs derived from the
   input fingerprint and the bundle's weights checksum
   (:func:`hipfuse.node.outbox.result_uid`), writes it into the outbox folder
   and queues it for every destination, so it is sent while
4. the Grad-CAM Secondary Captures are encoded and written; then one job
   store transaction queues them and marks the study analysed.

A crash before that commit leaves the study in ``analysing``. Start-up puts
it back to ``complete``, and the analysis runs again and produces the same
UIDs. An SR queued before the crash is not queued again.
An input the model cannot analyse (:class:`~hipfuse.inference.types.InputError`)
fails the study with the error's code and message. A node that stops while
the worker waits for text puts the study back to ``complete`` at once.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from hipfuse.node.encode import DeviceIdentity, build_secondary_captures, build_sr
from hipfuse.node.exception_text import exception_log_fields, exception_message
from hipfuse.node.jobstore import (
    JobStore,
    ResultObject,
    StateConflictError,
    StudyRecord,
)
from hipfuse.node.metrics import NodeMetrics, StudyOutcome
from hipfuse.node.outbox import OutboxFolder, result_uid
from hipfuse.node.states import FailureCode, JobKind, SkipReason, StudyState
from hipfuse.node.study_inputs import SelectedInputs, read_study_inputs, select_study_inputs
from hipfuse.node.wakeup import Wakeup

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from hipfuse.inference.model.config import BundleConfig
    from hipfuse.inference.pipeline import StudyInputs, StudyResult
    from hipfuse.node.clinical_text import TextGatherer, TextOutcome

log = structlog.get_logger(__name__)

AnalyzeFunction = Callable[["StudyInputs"], "StudyResult"]

# Reason of an analysis put back because the node stopped while it waited for text.
INTERRUPTED_REASON = "interrupted"

# Series Numbers of the outputs: high, so viewers list them after the source
# series. The Secondary Captures take one number per hip from SC_SERIES_NUMBER.
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902


class AnalysisFailedError(Exception):
    """A study that cannot be analysed or encoded; ``code`` becomes the state reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class AnalysisOutcome:
    """Outcome of one claimed study: its new state, reason, job and result objects."""

    study_instance_uid: str
    state: StudyState
    reason: str | None = None
    job_id: int | None = None
    objects: tuple[ResultObject, ...] = ()
    timings_s: dict[str, float] = field(default_factory=dict)


class AnalysisWorker:
    """Claims complete studies one at a time and turns them into queued results.

    Parameters
    ----------
    jobstore
        The node's job store.
    outbox
        Folder the result files are written to.
    analyze
        Runs the model on decoded inputs; the service passes
        ``analyze_study`` bound to the bundle it loaded once.
    bundle_config
        Configuration of that bundle: its name, version, intended use and
        weights checksum go into every output.
    destinations
        Names of the ``[[destinations]]`` that get each result.
    device
        The node's identity in the outputs.
    clock
        Seconds since the epoch for the job store.
    text
        Gathers each study's clinical text; ``None`` analyses the images alone.
    metrics
        Counts each study's outcome and analysis time; ``None`` counts nothing.
    """

    def __init__(
        self,
        jobstore: JobStore,
        outbox: OutboxFolder,
        *,
        analyze: AnalyzeFunction,
        bundle_config: BundleConfig,
        destinations: Sequence[str],
        device: DeviceIdentity | None = None,
        clock: Callable[[], float] = time.time,
        text: TextGatherer | None = None,
        wake: Wakeup | None = None,
        on_results: Callable[[], None] | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.jobstore = jobstore
        self.outbox = outbox
        self.analyze = analyze
        self.bundle_config = bundle_config
        self.destinations = list(destinations)
        self.device = device or DeviceIdentity()
        self.clock = clock
        self.text = text
        self.wake = wake
        self.on_results = on_results
        self.metrics = metrics
        self._next_bundle: tuple[AnalyzeFunction, BundleConfig] | None = None
        self._next_bundle_lock = threading.Lock()
        # Told the new bundle after a swap (the health check and metrics).
        self.on_bundle_swapped: Callable[[BundleConfig], None] | None = None

    def swap_bundle(self, analyze: AnalyzeFunction, bundle_config: BundleConfig) -> None:
        """Analyse with another bundle from the next study on.

        A study already being analysed finishes with the current bundle, so
        its outputs name the bundle that produced them. Safe to call from any thread.
        """
        with self._next_bundle_lock:
            self._next_bundle = (analyze, bundle_config)

    def _apply_next_bundle(self) -> None:
        with self._next_bundle_lock:
            next_bundle, self._next_bundle = self._next_bundle, None
        if next_bundle is None:
            return
        old = self.bundle_config
        self.analyze, self.bundle_config = next_bundle
        if self.on_bundle_swapped is not None:
            self.on_bundle_swapped(self.bundle_config)
        log.info(
            "bundle_swapped",
            bundle=self.bundle_config.name,
            version=self.bundle_config.version,
            weights_sha256=self.bundle_config.weights_sha256,
            previous_bundle=old.name,
            previous_version=old.version,
        )

    def run(self, stop: threading.Event, interval_s: float = 0.5) -> None:
        """Analyse studies until ``stop`` is set, waiting ``interval_s`` when none is complete.

        A study in progress is finished before the loop looks at ``stop``,
        unless it is still waiting for clinical text.
        """
        while not stop.is_set():
            try:
                outcome = self.run_once(stop)
            except Exception:  # a job store error; logged, and the loop tries again
                log.exception("worker_error")
                outcome = None
            if outcome is None:
                if self.wake is not None:
                    self.wake.wait(stop, interval_s)
                else:
                    stop.wait(interval_s)

    def run_once(self, stop: threading.Event | None = None) -> AnalysisOutcome | None:
        """Claim the longest-waiting complete study and process it; ``None`` if none waits."""
        study = self.jobstore.claim_next(StudyState.COMPLETE, StudyState.ANALYSING)
        if study is None:
            return None
        return self.process(study, stop)

    def process(self, study: StudyRecord, stop: threading.Event | None = None) -> AnalysisOutcome:
        """Analyse one study that this worker moved to ``analysing``.

        ``stop`` ends a wait for clinical text early and puts the study back.
        A bundle passed to :meth:`swap_bundle` is taken up here, before the study starts.
        """
        self._apply_next_bundle()
        uid = study.study_instance_uid
        selected = select_study_inputs(self.jobstore, uid)
        if selected.fingerprint is None or selected.fingerprint != study.input_fingerprint:
            # An instance arrived or was replaced after assembly; assemble again.
            return self._skip(uid, SkipReason.INPUTS_CHANGED)
        if self.jobstore.is_fingerprint_analysed(selected.fingerprint):
            return self._skip(uid, SkipReason.ALREADY_ANALYSED)

        job_id = self.jobstore.start_job(
            JobKind.ANALYSE, uid, details={"fingerprint": selected.fingerprint}
        )
        ids: dict[str, Any] = {"study_instance_uid": uid, "job_id": job_id}
        waited_s = self.clock() - study.last_instance_at
        log.info(
            "analysis_started",
            **ids,
            radiograph=selected.radiograph is not None,
            ct_slices=len(selected.ct_slices),
            waited_s=round(waited_s, 3),
        )
        started = time.perf_counter()
        try:
            inputs = self._read_inputs(uid, selected)
            text = self._gather_text(uid, job_id, inputs, stop)
            if text is not None and text.interrupted:
                return self._put_back(uid, job_id)
            objects, timings = self._analyse_and_write(uid, selected, inputs)
        except AnalysisFailedError as error:
            return self._fail(uid, job_id, error.code, str(error), started)
        except StateConflictError as error:
            return self._conflict(uid, job_id, error)

        if text is not None:
            timings["text_wait_s"] = text.waited_s
        timings["waited_s"] = waited_s
        timings["duration_s"] = time.perf_counter() - started
        rounded = {name: round(value, 4) for name, value in timings.items()}
        details: dict[str, Any] = {
            "job_id": job_id,
            "last_instance_at": study.last_instance_at,
            **rounded,
        }
        if text is not None:
            details["clinical_text"] = text.details()
        try:
            self.jobstore.record_results(
                uid,
                fingerprint=selected.fingerprint,
                objects=objects,
                destinations=self.destinations,
                job_id=job_id,
                details=details,
            )
        except StateConflictError as error:
            return self._conflict(uid, job_id, error)
        if self.on_results is not None:
            self.on_results()
        if not self.destinations:
            log.warning("no_destinations", **ids, message="results are kept in the outbox folder")
        log.info("analysis_finished", **ids, objects=len(objects), **rounded)
        if self.metrics is not None:
            duration_s = timings["duration_s"] - timings.get("text_wait_s", 0.0)
            self.metrics.study_completed(StudyOutcome.ANALYSED, duration_s)
        state = self.jobstore.get_study(uid).state
        return AnalysisOutcome(uid, state, None, job_id, tuple(objects), timings)

    def _read_inputs(self, uid: str, selected: SelectedInputs) -> StudyInputs:
        from hipfuse.inference.types import InputError

        try:
            return read_study_inputs(selected)
        except InputError as error:
            raise AnalysisFailedError(error.code, str(error)) from error
        except Exception as error:  # a reader bug: fail this study, keep the node up
            log.error("analysis_error", study_instance_uid=uid, **exception_log_fields(error))
            raise AnalysisFailedError(
                FailureCode.ANALYSIS_ERROR.value, exception_message(error)
            ) from error

    def _gather_text(
        self, uid: str, job_id: int, inputs: StudyInputs, stop: threading.Event | None
    ) -> TextOutcome | None:
        """Gather the study's clinical text into ``inputs``; record what contributed."""
        if self.text is None:
            return None
        from hipfuse.node.clinical_text import StudyKeys

        # The wait counts from completion: time spent queued behind other studies is part of it.
        waited_s = max(self.clock() - self._completed_at(uid), 0.0)
        outcome = self.text.gather(
            StudyKeys.from_inputs(inputs),
            wait_s=max(self.text.wait_s - waited_s, 0.0),
            stop=stop,
            study_instance_uid=uid,
        )
        if outcome.interrupted:
            return outcome
        inputs.text = outcome.text
        details = outcome.details()
        self.jobstore.record_event("clinical_text_gathered", uid, {"job_id": job_id, **details})
        log.info(
            "clinical_text_gathered",
            study_instance_uid=uid,
            job_id=job_id,
            available=details["available"],
            sources=len(outcome.sources),
            warnings=[code for code, _ in outcome.warnings],
            waited_s=details["waited_s"],
        )
        return outcome

    def _completed_at(self, uid: str) -> float:
        """Return when the study last became ``complete``; now when no event records it."""
        events = self.jobstore.list_events(uid, limit=50)
        completed = [event.at for event in events if event.event == "study_complete"]
        return completed[-1] if completed else self.clock()

    def _analyse_and_write(
        self, uid: str, selected: SelectedInputs, inputs: StudyInputs
    ) -> tuple[list[ResultObject], dict[str, float]]:
        from hipfuse.inference.model.predict import model_compute_s
        from hipfuse.inference.types import InputError

        # The headers the outputs reference are read while the model runs,
        # which spends most of its time in torch kernels that release the GIL.
        with ThreadPoolExecutor(1, thread_name_prefix="hipfuse-sources") as pool:
            sources_read = pool.submit(self._read_sources, uid, selected)
            try:
                started = time.perf_counter()
                result = self.analyze(inputs)
            except InputError as error:
                raise AnalysisFailedError(error.code, str(error)) from error
            except Exception as error:  # a model or reader bug: fail this study, keep the node up
                log.error("analysis_error", study_instance_uid=uid, **exception_log_fields(error))
                raise AnalysisFailedError(
                    FailureCode.ANALYSIS_ERROR.value, exception_message(error)
                ) from error
            analysed_at = time.perf_counter()
            sources = sources_read.result()
        timings = {
            "decode_s": inputs.decode_s,
            "analysis_s": analysed_at - started,
            "model_s": float(result.timings_s.get("total_s", 0.0)),
            "model_compute_s": model_compute_s(result.timings_s),
        }

        started = analysed_at
        objects = self._write(uid, self._encoded(uid, self.encode_sr, result, selected, sources))
        timings["sr_encode_s"] = time.perf_counter() - started
        if self.destinations:
            # The SR goes out while the Secondary Captures are made: it is the
            # result radiologists read first.
            # NOTE: after a crash before record_results the study is analysed
            # again. Result UIDs derive from the inputs and the weights, so PACS
            # gets the same SR again, unless the bundle changed in between: then
            # it gets a second SR, which names the other algorithm version.
            assert selected.fingerprint is not None
            self.jobstore.queue_results(
                uid,
                fingerprint=selected.fingerprint,
                objects=objects,
                destinations=self.destinations,
            )
            if self.on_results is not None:
                self.on_results()
        captures = self._encoded(uid, self.encode_captures, result, selected, sources)
        objects += self._write(uid, captures)
        timings["encode_s"] = time.perf_counter() - started
        return objects, timings

    def _read_sources(self, uid: str, selected: SelectedInputs) -> list[Dataset]:
        """Read the headers of the input instances, which the results reference."""
        import pydicom

        try:
            return [
                pydicom.dcmread(instance.path, stop_before_pixels=True)
                for instance in selected.instances
            ]
        except Exception as error:  # a spooled file changed or vanished since it was read
            log.error("encoding_error", study_instance_uid=uid, **exception_log_fields(error))
            raise AnalysisFailedError(
                FailureCode.ENCODING_ERROR.value, exception_message(error)
            ) from error

    def _encoded(self, uid: str, build: Callable[..., list[Dataset]], *args: Any) -> list[Dataset]:
        """Run one encoder; log its warnings without their text; map errors to a failure."""
        try:
            # highdicom warns with the Patient's Name in the message (a name of one
            # component, for example), so warnings are logged without their text.
            # catch_warnings is process-wide: other threads' warnings meanwhile land here.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                datasets = build(*args)
        except Exception as error:  # highdicom and the encoders raise ValueError and others
            log.error("encoding_error", study_instance_uid=uid, **exception_log_fields(error))
            raise AnalysisFailedError(
                FailureCode.ENCODING_ERROR.value, exception_message(error)
            ) from error
        # One line per distinct source, with a count: highdicom repeats the same
        # warning for every object of a study.
        counts = Counter(
            (
                warning.category.__name__,
                f"{Path(warning.filename).name}:{warning.lineno}",
                encoder_warning_meaning(str(warning.message)),
            )
            for warning in caught
        )
        for (category, source, meaning), count in sorted(counts.items()):
            log.info(
                "encoding_warning",
                study_instance_uid=uid,
                category=category,
                source=source,
                meaning=meaning,
                count=count,
            )
        return datasets

    def _write(self, uid: str, datasets: Sequence[Dataset]) -> list[ResultObject]:
        try:
            return self.outbox.write(uid, datasets)
        except OSError as error:
            raise AnalysisFailedError(
                FailureCode.OUTBOX_WRITE_FAILED.value,
                f"result files cannot be written to {self.outbox.study_dir(uid)}: "
                f"{error.strerror}; free disk space or fix the folder's permissions, then "
                "send the study again",
            ) from error

    def encode_sr(
        self, result: StudyResult, selected: SelectedInputs, sources: Sequence[Dataset]
    ) -> list[Dataset]:
        """Build the SR, with UIDs fixed by the inputs and the bundle."""
        assert selected.fingerprint is not None
        checksum = self.bundle_config.weights_sha256
        sr = build_sr(
            result,
            self.bundle_config,
            sources,
            series_number=SR_SERIES_NUMBER,
            device=self.device,
            series_instance_uid=result_uid("sr-series", selected.fingerprint, checksum),
            sop_instance_uid=result_uid("sr", selected.fingerprint, checksum),
        )
        return [sr]

    def encode_captures(
        self, result: StudyResult, selected: SelectedInputs, sources: Sequence[Dataset]
    ) -> list[Dataset]:
        """Build the Grad-CAM Secondary Captures, with UIDs fixed by the inputs and the bundle."""
        assert selected.fingerprint is not None
        captures = build_secondary_captures(
            result, self.bundle_config, sources, series_number=SC_SERIES_NUMBER, device=self.device
        )
        fix_capture_uids(captures, selected.fingerprint, self.bundle_config.weights_sha256)
        return captures

    def _conflict(self, uid: str, job_id: int, error: StateConflictError) -> AnalysisOutcome:
        """End the job of a study whose state or inputs changed while it was analysed."""
        self.jobstore.finish_job(job_id, succeeded=False, error=str(error))
        log.error(
            "analysis_failed",
            study_instance_uid=uid,
            job_id=job_id,
            error_code="state_conflict",
            error=str(error),
        )
        return AnalysisOutcome(uid, self.jobstore.get_study(uid).state, None, job_id)

    def _put_back(self, uid: str, job_id: int) -> AnalysisOutcome:
        message = "the node stopped while the study waited for clinical text"
        self.jobstore.finish_job(job_id, succeeded=False, error=f"{INTERRUPTED_REASON}: {message}")
        self.jobstore.transition(
            uid,
            StudyState.COMPLETE,
            expected=StudyState.ANALYSING,
            details={"job_id": job_id, "reason": INTERRUPTED_REASON, "message": message},
        )
        log.info("analysis_put_back", study_instance_uid=uid, job_id=job_id)
        return AnalysisOutcome(uid, StudyState.COMPLETE, INTERRUPTED_REASON, job_id)

    def _skip(self, uid: str, reason: SkipReason) -> AnalysisOutcome:
        self.jobstore.transition(
            uid, StudyState.SKIPPED, reason=reason.value, expected=StudyState.ANALYSING
        )
        log.info("study_skipped", study_instance_uid=uid, reason=reason.value)
        if self.metrics is not None:
            self.metrics.study_completed(StudyOutcome.SKIPPED)
        return AnalysisOutcome(uid, StudyState.SKIPPED, reason.value)

    def _fail(
        self, uid: str, job_id: int, code: str, message: str, started: float
    ) -> AnalysisOutcome:
        duration_s = round(time.perf_counter() - started, 4)
        self.jobstore.transition(
            uid,
            StudyState.FAILED,
            reason=code,
            expected=StudyState.ANALYSING,
            details={"job_id": job_id, "message": message},
        )
        self.jobstore.finish_job(job_id, succeeded=False, error=f"{code}: {message}")
        log.warning(
            "analysis_failed",
            study_instance_uid=uid,
            job_id=job_id,
            error_code=code,
            error=message,
            duration_s=duration_s,
        )
        if self.metrics is not None:
            self.metrics.study_completed(StudyOutcome.FAILED)
        return AnalysisOutcome(uid, StudyState.FAILED, code, job_id)


# Fixed explanations of the encoders' known warnings, found by a fragment of
# their text; the text itself may quote patient data and is never logged.
_WARNING_MEANINGS = (
    (
        "contains only a single component",
        "a person name copied from the source images (such as Patient's Name) has no "
        "caret-separated components; it is copied unchanged",
    ),
    (
        '"patient_name" is potentially invalid',
        "Patient's Name copied from the source images is not in the usual "
        "family^given form; it is copied unchanged",
    ),
)


def encoder_warning_meaning(message: str) -> str:
    """Return a fixed, patient-free explanation of an encoder warning."""
    for fragment, meaning in _WARNING_MEANINGS:
        if fragment in message:
            return meaning
    return "not recognised; its text is not logged because it may quote patient data"


def fix_capture_uids(captures: Sequence[Dataset], fingerprint: str, checksum: str) -> None:
    """Replace the random Series and SOP Instance UIDs of Secondary Captures with fixed ones.

    Each UID is derived from the input fingerprint, the weights checksum, the
    Series Number (one per hip) and the Instance Number, so analysing the same
    inputs again gives the same UIDs.
    """
    for capture in captures:
        series_number = str(capture.SeriesNumber)
        capture.SeriesInstanceUID = result_uid("sc-series", fingerprint, checksum, series_number)
        instance_number = str(capture.InstanceNumber)
        sop_uid = result_uid("sc", fingerprint, checksum, series_number, instance_number)
        capture.SOPInstanceUID = sop_uid
        file_meta = getattr(capture, "file_meta", None)
        if file_meta is not None:
            file_meta.MediaStorageSOPInstanceUID = sop_uid
