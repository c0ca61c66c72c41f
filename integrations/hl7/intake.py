"""Turn one received HL7 v2 message into a stored record and its acknowledgement.

Shared by the MLLP listener and the watched folder. An accepted message is
committed to the store before its ACK is built. A message acknowledged with AE
or AR is kept in the store's ``rejected`` table with the reason, so nothing
that arrived is dropped without a trace.
"""

from __future__ import annotations

import hashlib
import sqlite3
import traceback
from dataclasses import dataclass
from enum import StrEnum

import structlog

from hipfuse.config.clinical_text import HL7Settings
from hipfuse.integrations.hl7.ack import AckContext, build_ack
from hipfuse.integrations.hl7.clinical import extract_content
from hipfuse.integrations.hl7.errors import AckCode, HL7ErrorCode, MessageError
from hipfuse.integrations.hl7.header import check_header
from hipfuse.integrations.hl7.parser import ParsedMessage, parse_message, read_raw_header, strip_bom
from hipfuse.integrations.hl7.store import HL7Store, RecordOutcome

log = structlog.get_logger(__name__)


class IntakeOutcome(StrEnum):
    """Outcome of a received message."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True)
class IntakeResult:
    """The outcome of one message and the ACK to send back.

    Attributes
    ----------
    outcome
        Accepted, duplicate (acknowledged again) or rejected.
    ack_code
        MSA-1 of the ACK.
    control_id
        MSH-10 of the message, '' when it could not be read.
    reason
        Why the message was rejected; '' when accepted.
    ack
        The encoded ACK, without MLLP framing.
    record_id
        Row id in ``messages`` (accepted, duplicate) or ``rejected``; ``None``
        when the store could not be written.
    """

    outcome: IntakeOutcome
    ack_code: AckCode
    control_id: str
    reason: str
    ack: bytes
    record_id: int | None = None


class HL7Intake:
    """Parse, check, store and acknowledge messages.

    Parameters
    ----------
    store
        Where messages are kept.
    settings
        The ``[hl7]`` settings: default character set, accepted processing
        IDs, MSH-3 of the ACK.
    """

    def __init__(self, store: HL7Store, settings: HL7Settings) -> None:
        self.store = store
        self.settings = settings

    def process(self, raw: bytes, source: str) -> IntakeResult:
        """Handle one message and return its ACK.

        Parameters
        ----------
        raw
            The message bytes without MLLP framing.
        source
            Where it came from, for the store and the logs (``mllp:10.0.0.5``,
            ``file:`` and the random id of a watched-folder file).
        """
        try:
            return self._process(raw, source)
        except Exception as exc:
            # A fault of this receiver must still send an ACK and keep the message.
            # The log gets the stack without local values (message text).
            log.error(
                "hl7_message_processing_failed",
                source=source,
                error=type(exc).__name__,
                stack="".join(traceback.format_tb(exc.__traceback__)),
            )
            error = MessageError(
                AckCode.REJECT,
                HL7ErrorCode.APPLICATION_INTERNAL_ERROR,
                f"internal error while processing the message ({type(exc).__name__}); "
                "it is kept for inspection, send it again after the receiver is fixed",
            )
            return self._reject(raw, source, error, self._raw_context(raw))

    def _process(self, raw: bytes, source: str) -> IntakeResult:
        try:
            message = parse_message(raw, self.settings.default_charset)
        except MessageError as error:
            return self._reject(raw, source, error, self._raw_context(raw))
        context = AckContext.from_message(message)
        try:
            header = check_header(message, self.settings.processing_ids)
            content = extract_content(message, header)
        except MessageError as error:
            return self._reject(raw, source, error, context)

        try:
            outcome, record_id = self.store.record_message(
                header,
                content,
                raw=raw,
                source=source,
                charset=message.charset,
                codec=message.codec,
                content_sha256=_content_digest(message),
            )
        except sqlite3.Error as exc:
            log.error(
                "hl7_message_store_failed",
                control_id=header.control_id,
                source=source,
                error=str(exc),
            )
            error = MessageError(
                AckCode.REJECT,
                HL7ErrorCode.APPLICATION_INTERNAL_ERROR,
                "the message could not be stored; send it again later",
            )
            return self._ack(context, IntakeOutcome.REJECTED, error, None)

        if outcome is RecordOutcome.CONFLICT:
            error = MessageError(
                AckCode.ERROR,
                HL7ErrorCode.DUPLICATE_KEY_IDENTIFIER,
                f"MSH-10 control ID {header.control_id!r} from this sending application and "
                "facility was already received with different content; give each message "
                "its own control ID",
                ("MSH", 1, 10),
            )
            return self._reject(raw, source, error, context)
        if outcome is RecordOutcome.DUPLICATE:
            log.info(
                "hl7_message_duplicate",
                control_id=header.control_id,
                record_id=record_id,
                source=source,
            )
            return self._ack(context, IntakeOutcome.DUPLICATE, None, record_id)
        log.info(
            "hl7_message_accepted",
            control_id=header.control_id,
            message_type=header.type_label,
            version=header.version,
            charset=message.charset or self.settings.default_charset,
            text_items=len(content.items),
            skipped_values=content.skipped_values,
            joined_lines=message.joined_lines,
            record_id=record_id,
            source=source,
        )
        return self._ack(context, IntakeOutcome.ACCEPTED, None, record_id)

    def process_incomplete(
        self, raw: bytes, source: str, reason: str, *, truncated: bool = False
    ) -> IntakeResult:
        """Reject a message that did not arrive whole, keeping what arrived.

        Parameters
        ----------
        raw
            The bytes that arrived.
        source
            As for :meth:`process`.
        reason
            What is missing, for MSA-3, ERR and the ``rejected`` table.
        truncated
            ``raw`` is the beginning of a message too large to keep whole.
        """
        error = MessageError(AckCode.REJECT, HL7ErrorCode.SEGMENT_SEQUENCE_ERROR, reason)
        return self._reject(raw, source, error, self._raw_context(raw), truncated=truncated)

    def _raw_context(self, raw: bytes) -> AckContext:
        try:
            body, _ = strip_bom(raw)
            return AckContext.from_raw_header(read_raw_header(body.lstrip(b"\r\n\t ")))
        except MessageError:
            return AckContext()

    def _reject(
        self,
        raw: bytes,
        source: str,
        error: MessageError,
        context: AckContext,
        *,
        truncated: bool = False,
    ) -> IntakeResult:
        record_id = None
        try:
            record_id = self.store.record_rejected(
                raw=raw,
                source=source,
                ack_code=error.ack_code.value,
                error_code=error.error_code.value,
                reason=error.reason,
                control_id=context.control_id,
                truncated=truncated,
            )
        except sqlite3.Error as exc:
            log.error("hl7_rejected_store_failed", source=source, error=str(exc))
        log.warning(
            "hl7_message_rejected",
            control_id=context.control_id,
            ack_code=error.ack_code.value,
            error_code=error.error_code.value,
            reason=error.reason,
            record_id=record_id,
            source=source,
        )
        return self._ack(context, IntakeOutcome.REJECTED, error, record_id)

    def _ack(
        self,
        context: AckContext,
        outcome: IntakeOutcome,
        error: MessageError | None,
        record_id: int | None,
    ) -> IntakeResult:
        code = AckCode.ACCEPT if error is None else error.ack_code
        ack = build_ack(context, code, application_name=self.settings.application_name, error=error)
        return IntakeResult(
            outcome,
            code,
            context.control_id,
            error.reason if error is not None else "",
            ack,
            record_id,
        )


def _content_digest(message: ParsedMessage) -> str:
    """SHA-256 of every segment after MSH, so a resend with a new MSH-7 still counts as the same."""
    body = "\r".join(
        message.encoding.field.join(segment.fields) for segment in message.segments[1:]
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()
