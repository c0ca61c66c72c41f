"""Acknowledgment codes, HL7 error codes and the error a rejected message raises."""

from __future__ import annotations

from enum import StrEnum


class AckCode(StrEnum):
    """MSA-1 Acknowledgment Code in original mode (HL7 Table 0008)."""

    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


class HL7ErrorCode(StrEnum):
    """ERR HL7 Error Code (HL7 Table 0357)."""

    SEGMENT_SEQUENCE_ERROR = "100"
    REQUIRED_FIELD_MISSING = "101"
    DATA_TYPE_ERROR = "102"
    TABLE_VALUE_NOT_FOUND = "103"
    UNSUPPORTED_MESSAGE_TYPE = "200"
    UNSUPPORTED_EVENT_CODE = "201"
    UNSUPPORTED_PROCESSING_ID = "202"
    UNSUPPORTED_VERSION_ID = "203"
    DUPLICATE_KEY_IDENTIFIER = "205"
    APPLICATION_INTERNAL_ERROR = "207"


# Display text of each code in Table 0357, written into ERR beside the code.
ERROR_CODE_TEXT: dict[HL7ErrorCode, str] = {
    HL7ErrorCode.SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    HL7ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing",
    HL7ErrorCode.DATA_TYPE_ERROR: "Data type error",
    HL7ErrorCode.TABLE_VALUE_NOT_FOUND: "Table value not found",
    HL7ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    HL7ErrorCode.UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    HL7ErrorCode.UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    HL7ErrorCode.UNSUPPORTED_VERSION_ID: "Unsupported version id",
    HL7ErrorCode.DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    HL7ErrorCode.APPLICATION_INTERNAL_ERROR: "Application internal error",
}


class MessageError(Exception):
    """A message that is acknowledged with AE or AR instead of AA.

    Parameters
    ----------
    ack_code
        AR when the message cannot be processed at all (unreadable header,
        unsupported type, version or processing ID, a failure here); AE when
        its content is in error (a required field missing, undecodable text).
    error_code
        The Table 0357 code for the ERR segment.
    reason
        What is wrong and how to fix it; goes into MSA-3 and ERR.
    location
        ``(segment ID, segment sequence, field position)`` of the problem, for
        ERR; ``None`` when it concerns the message as a whole.
    """

    def __init__(
        self,
        ack_code: AckCode,
        error_code: HL7ErrorCode,
        reason: str,
        location: tuple[str, int, int] | None = None,
    ) -> None:
        super().__init__(reason)
        self.ack_code = ack_code
        self.error_code = error_code
        self.reason = reason
        self.location = location
