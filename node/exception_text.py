"""Text of unexpected exceptions for the log and the job store, without patient data.

pydicom and highdicom quote attribute values in their exception messages, and
those values include patient attributes. highdicom 0.28 with pydicom 3.0
raises ``ValueError: Unable to convert '1961-03-17' to 'DA' object`` when the
source images carry a Patient's Birth Date that is not a DICOM date (DA). The
message of an exception raised in either library is therefore left out: the
log line and the job store keep its type, the module and line that raised it,
and the stack without messages. Exceptions from other code (torch, numpy,
hipfuse itself) keep their message, which names the problem to fix.
"""

from __future__ import annotations

import traceback
from typing import Any

# Top-level packages whose exception messages can quote DICOM attribute values.
VALUE_QUOTING_PACKAGES = ("pydicom", "highdicom")
MESSAGE_WITHHELD = (
    "message left out because pydicom and highdicom quote attribute values, "
    "patient attributes included"
)


def _chain(error: BaseException) -> list[BaseException]:
    """Return ``error`` and the exceptions it was raised from or while handling."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _module_of(frame: Any) -> str:
    return str(frame.f_globals.get("__name__", ""))


def _is_value_quoting(module: str) -> bool:
    return module.split(".", 1)[0] in VALUE_QUOTING_PACKAGES


def quotes_dicom_values(error: BaseException) -> bool:
    """Return whether ``error``, or an exception in its chain, was raised in pydicom or highdicom.

    Any frame of the traceback counts, so an exception that hipfuse code
    re-raises with the library's message in its own counts as well.
    """
    return any(
        _is_value_quoting(_module_of(frame))
        for link in _chain(error)
        for frame, _ in traceback.walk_tb(link.__traceback__)
    )


def _raised_at(error: BaseException) -> str:
    """Return ``module line N`` of the innermost frame, or ``""`` without a traceback."""
    frames = list(traceback.walk_tb(error.__traceback__))
    if not frames:
        return ""
    frame, line = frames[-1]
    return f"{_module_of(frame)} line {line}"


def exception_message(error: BaseException) -> str:
    """Return ``Type: message``, or only the type and where it was raised (see module docstring)."""
    name = type(error).__name__
    if not quotes_dicom_values(error):
        return f"{name}: {error}"
    raised_at = _raised_at(error)
    where = f" raised in {raised_at}" if raised_at else ""
    return f"{name}{where} ({MESSAGE_WITHHELD})"


def exception_log_fields(error: BaseException) -> dict[str, Any]:
    """Return the keys that describe ``error`` in a structlog line.

    ``exc_info`` (the whole traceback with messages) when no message can
    quote attribute values. Otherwise ``error`` from :func:`exception_message`
    and ``stack``, the frames of each exception in the chain with their source
    lines but no message.
    """
    if not quotes_dicom_values(error):
        return {"exc_info": error}
    stacks = [
        type(link).__name__ + "\n" + "".join(traceback.format_tb(link.__traceback__))
        for link in reversed(_chain(error))
    ]
    return {"error": exception_message(error), "stack": "\n".join(stacks)}
