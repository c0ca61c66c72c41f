"""Field types, validators and the section base class shared by every settings section.

Each section is a frozen pydantic model that rejects unknown keys. A check
that involves several keys raises :class:`SettingsKeyError`, and
:func:`hipfuse.config.settings.load_settings` reports it at the key it names.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# Application Entity titles use the DICOM default character repertoire
# (ISO 646 G0 printable characters) without backslash and without control
# characters, at most 16 characters (PS3.5 Table 6.2-1, VR AE).
_AE_TITLE_CHARACTERS = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
# A DNS host name (RFC 1123 labels) for destinations given by name.
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class SettingsKeyError(ValueError):
    """A problem that involves several keys, reported at ``key`` of the section validated.

    :func:`hipfuse.config.settings.load_settings` appends ``key`` to the
    dotted path of the error it reports.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class Section(BaseModel):
    """Base of every settings section: frozen, unknown keys rejected."""

    # Unknown keys are errors, so a misspelt key never silently keeps its default.
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_ae_title(value: str) -> str:
    """Validate an AE title and strip its insignificant spaces."""
    if not _AE_TITLE_CHARACTERS.match(value):
        raise ValueError(
            f"AE title {value!r} must be 1 to 16 characters of the DICOM default "
            "repertoire (printable ASCII) without backslash"
        )
    if not value.strip():
        raise ValueError("AE title must not be all spaces")
    # Leading and trailing spaces are not significant in an AE title (PS3.5, VR AE).
    return value.strip()


def check_ip_address(value: str) -> str:
    """Validate an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
    return value


def check_network(value: str) -> str:
    """Validate an IP address or a CIDR network without host bits."""
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            suggestion = ipaddress.ip_network(value, strict=False)
            raise ValueError(
                f"{value!r} has host bits set; write the network as {suggestion}"
            ) from None
        raise ValueError(f"{value!r} is not an IP address or CIDR network") from None
    return value


def check_host(value: str) -> str:
    """Validate an IP address or a DNS host name."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOST_NAME.match(value):
            raise ValueError(f"{value!r} is neither an IP address nor a host name") from None
    return value


AETitle = Annotated[str, AfterValidator(check_ae_title)]
IPAddress = Annotated[str, AfterValidator(check_ip_address)]
IPNetwork = Annotated[str, AfterValidator(check_network)]
HostName = Annotated[str, AfterValidator(check_host)]
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0)]
NonNegativeSeconds = Annotated[float, Field(ge=0)]
NonNegativeDays = Annotated[float, Field(ge=0)]
PositiveBytes = Annotated[int, Field(gt=0)]
