"""Exception text for the log and the job store: messages of pydicom errors are left out."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import structlog
from pydicom.valuerep import DA

from hipfuse.node.exception_text import (
    MESSAGE_WITHHELD,
    exception_log_fields,
    exception_message,
    quotes_dicom_values,
)

BIRTH_DATE = "1961-03-17"


def convert_birth_date() -> None:
    DA(BIRTH_DATE)


def rewrap_birth_date_error() -> None:
    try:
        DA(BIRTH_DATE)
    except ValueError as error:
        raise RuntimeError(f"encoding failed: {error}") from error


def fail_while_handling() -> None:
    try:
        DA(BIRTH_DATE)
    except ValueError:
        raise KeyError(f"no fallback for {BIRTH_DATE}") from None


def fail_in_hipfuse() -> None:
    raise RuntimeError("CUDA out of memory")


def raised_by(function: Callable[[], None]) -> BaseException:
    with pytest.raises(Exception) as caught:
        function()
    return caught.value


@pytest.mark.parametrize(
    ("function", "withheld"),
    [
        (convert_birth_date, True),
        (rewrap_birth_date_error, True),
        (fail_in_hipfuse, False),
    ],
    ids=["pydicom", "rewrapped-pydicom", "other-code"],
)
def test_quotes_dicom_values(function: Callable[[], None], withheld: bool) -> None:
    assert quotes_dicom_values(raised_by(function)) is withheld


def test_suppressed_context_still_counts() -> None:
    # ``from None`` hides the context from the printed traceback, not from __context__.
    assert quotes_dicom_values(raised_by(fail_while_handling)) is True


@pytest.mark.parametrize(
    "function",
    [convert_birth_date, rewrap_birth_date_error, fail_while_handling],
    ids=["pydicom", "rewrapped-pydicom", "while-handling"],
)
def test_message_leaves_out_value(function: Callable[[], None]) -> None:
    error = raised_by(function)

    message = exception_message(error)

    assert BIRTH_DATE not in message
    assert message.startswith(type(error).__name__)
    assert MESSAGE_WITHHELD in message


def test_message_names_raising_module() -> None:
    message = exception_message(raised_by(convert_birth_date))

    assert message.startswith("ValueError raised in pydicom.valuerep line ")


def test_message_of_other_code_kept() -> None:
    assert exception_message(raised_by(fail_in_hipfuse)) == "RuntimeError: CUDA out of memory"


def test_message_without_traceback() -> None:
    error = ValueError(f"Unable to convert '{BIRTH_DATE}'")

    assert exception_message(error) == f"ValueError: Unable to convert '{BIRTH_DATE}'"


def render_json(**fields) -> str:
    """Render one log line as the node does: JSON with the traceback formatted."""
    logger = structlog.wrap_logger(
        structlog.ReturnLogger(),
        processors=[structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
    )
    return logger.error("encoding_error", **fields)


@pytest.mark.parametrize(
    "function",
    [convert_birth_date, rewrap_birth_date_error, fail_while_handling],
    ids=["pydicom", "rewrapped-pydicom", "while-handling"],
)
def test_log_line_leaves_out_value(function: Callable[[], None]) -> None:
    line = render_json(**exception_log_fields(raised_by(function)))

    assert BIRTH_DATE not in line
    assert "exception" not in json.loads(line)


def test_log_line_has_stack_of_each_exception() -> None:
    stack = exception_log_fields(raised_by(rewrap_birth_date_error))["stack"]

    # Oldest first, as Python prints a chain: pydicom's ValueError, then the rewrap.
    assert "\nValueError\n" in stack
    assert "\nRuntimeError\n" in stack
    assert stack.index("\nValueError\n") < stack.index("\nRuntimeError\n")
    assert "in rewrap_birth_date_error" in stack


def test_log_line_of_other_code_has_traceback() -> None:
    line = json.loads(render_json(**exception_log_fields(raised_by(fail_in_hipfuse))))

    assert "RuntimeError: CUDA out of memory" in line["exception"]
