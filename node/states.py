"""Defined terms of the job store: study states, their legal transitions, skip reasons.

A study moves ``receiving → complete → analysing → analysed → sending →
done``; ``skipped`` and ``failed`` end the flow early with a reason. The
analysis worker encodes its SR and Secondary Captures while the study is
``analysing`` and records them in the outbox in the same transaction that
moves the study to ``analysed`` and on to ``sending`` (or ``done`` with no
destination). ``encoding`` is kept for a worker that stores its analysis
before encoding it.
A new instance re-opens a study that has ended (``done``, ``skipped``,
``failed``) or that waits for analysis (``complete``); a study in the middle of
processing is re-opened as soon as that processing ends. Add states here, with
their transitions, rather than passing new strings to the job store.
"""

from __future__ import annotations

from enum import StrEnum


class StudyState(StrEnum):
    """Processing state of one study in the job store."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    ANALYSING = "analysing"
    ANALYSED = "analysed"
    ENCODING = "encoding"
    SENDING = "sending"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


class SkipReason(StrEnum):
    """Reason a complete study is not analysed."""

    NO_HIP_IMAGES = "no_hip_images"
    ALREADY_ANALYSED = "already_analysed"
    # Inputs changed between assembly and analysis; the study is assembled again.
    INPUTS_CHANGED = "inputs_changed"


class FailureCode(StrEnum):
    """Reasons of the ``failed`` state that the node sets itself.

    An input the model cannot analyse is recorded with the ``InputError`` code
    of the reader or pipeline instead (``hip_not_found``, ``ct_missing_slices``...).
    """

    ANALYSIS_ERROR = "analysis_error"
    ENCODING_ERROR = "encoding_error"
    OUTBOX_WRITE_FAILED = "outbox_write_failed"
    SEND_FAILED = "send_failed"


class JobState(StrEnum):
    """State of one job (a unit of retried work such as sending to one destination)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class JobKind(StrEnum):
    """Kinds of job in the ``jobs`` table."""

    # Analysis and encoding of one claimed study.
    ANALYSE = "analyse"
    # C-STORE of one result object to one destination (one outbox item).
    SEND = "send"


S = StudyState

# Legal moves. ANALYSING → COMPLETE and ENCODING → ANALYSED put back work that a
# stopped worker left half done; FAILED/SKIPPED → COMPLETE is a manual retry.
# DONE/FAILED/SKIPPED → SENDING is an admin's resend or retry of the study's
# existing results (hipfuse-node resend, retry-failed).
TRANSITIONS: dict[StudyState, frozenset[StudyState]] = {
    S.RECEIVING: frozenset({S.COMPLETE, S.SKIPPED, S.FAILED}),
    S.COMPLETE: frozenset({S.ANALYSING, S.RECEIVING, S.SKIPPED, S.FAILED}),
    S.ANALYSING: frozenset({S.ANALYSED, S.COMPLETE, S.SKIPPED, S.FAILED}),
    S.ANALYSED: frozenset({S.ENCODING, S.SENDING, S.DONE, S.FAILED}),
    S.ENCODING: frozenset({S.SENDING, S.ANALYSED, S.FAILED}),
    S.SENDING: frozenset({S.DONE, S.FAILED}),
    S.DONE: frozenset({S.RECEIVING, S.SENDING}),
    S.SKIPPED: frozenset({S.RECEIVING, S.COMPLETE, S.SENDING}),
    S.FAILED: frozenset({S.RECEIVING, S.COMPLETE, S.SENDING}),
}

# States that end the flow; a new instance re-opens the study from them.
FINAL_STATES: frozenset[StudyState] = frozenset({S.DONE, S.SKIPPED, S.FAILED})
# States a worker holds; a new instance only marks the study for re-opening.
PROCESSING_STATES: frozenset[StudyState] = frozenset(
    {S.ANALYSING, S.ANALYSED, S.ENCODING, S.SENDING}
)
# States that need a reason (a SkipReason value or an error code).
STATES_WITH_REASON: frozenset[StudyState] = frozenset({S.SKIPPED, S.FAILED})
# Work left half done by a stopped process, and the state that redoes it.
INTERRUPTED_STATES: dict[StudyState, StudyState] = {
    S.ANALYSING: S.COMPLETE,
    S.ENCODING: S.ANALYSED,
}
