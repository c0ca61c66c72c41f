"""Settings of the clinical-text integrations: ``[hl7]`` and ``[fhir]``.

This module imports nothing of hipfuse outside ``hipfuse.integrations`` (only
pydantic and the character-set table), so ``hipfuse.config.settings`` can use
:class:`HL7Settings` and :class:`FHIRSettings` as its ``hl7`` and ``fhir``
sections without an import cycle. The sections follow the conventions of the
other sections there: unknown keys are errors, values are frozen, units are in
the key names, and every key has a default that the shipped TOML file shows.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from hipfuse.integrations.hl7.charsets import UnknownCharsetError, codec_for_charset


class SettingsKeyError(ValueError):
    """A problem that involves several keys, reported at ``key`` of the section.

    ``hipfuse.config.settings`` appends ``key`` to the error path it shows.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _check_ip_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
    return value


def _check_network(value: str) -> str:
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


def _check_charset(value: str) -> str:
    try:
        codec_for_charset(value)
    except UnknownCharsetError as exc:
        raise ValueError(str(exc)) from None
    return value


_IPAddress = Annotated[str, AfterValidator(_check_ip_address)]
_IPNetwork = Annotated[str, AfterValidator(_check_network)]
_Port = Annotated[int, Field(ge=1, le=65535)]
_PositiveSeconds = Annotated[float, Field(gt=0)]
_NonNegativeDays = Annotated[float, Field(ge=0)]


class _Section(BaseModel):
    # Unknown keys are errors, so a misspelt key never silently keeps its default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class HL7Settings(_Section):
    """HL7 v2 listener over MLLP and watched folder for clinical text (``[hl7]``)."""

    enabled: bool = False
    bind_address: _IPAddress = "127.0.0.1"
    # 2575 is the port IANA registered for HL7 over MLLP.
    port: _Port = 2575
    allowed_addresses: list[_IPNetwork] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    max_connections: Annotated[int, Field(ge=1, le=1000)] = 20
    max_message_bytes: Annotated[int, Field(ge=1024)] = 10 * 1024 * 1024
    idle_timeout_s: _PositiveSeconds = 300.0
    # Character set of messages whose MSH-18 is empty: an HL7 Table 0211 value
    # ("UNICODE UTF-8", "GB 18030-2000", "8859/1") or a Python codec name.
    default_charset: Annotated[str, AfterValidator(_check_charset)] = "UNICODE UTF-8"
    # MSH-11 Processing ID values accepted; P is production, T training, D debugging.
    processing_ids: list[Annotated[str, Field(min_length=1, max_length=3)]] = Field(
        default_factory=lambda: ["P"]
    )
    application_name: Annotated[str, Field(min_length=1, max_length=64)] = "HIPFUSE"
    watch_dir: Path | None = None
    watch_stable_s: _PositiveSeconds = 2.0
    # Text of the patient dated this long before or after the study counts
    # when no order number links it to the study. Diagnoses, medications and
    # social history count back to history_before_days.
    window_before_days: _NonNegativeDays = 365.0
    window_after_days: _NonNegativeDays = 7.0
    history_before_days: _NonNegativeDays = 3650.0

    @model_validator(mode="after")
    def _check_processing_ids(self) -> HL7Settings:
        if not self.processing_ids:
            raise SettingsKeyError(
                "processing_ids", "processing_ids must list at least one MSH-11 value, such as P"
            )
        return self

    def allows(self, address: str) -> bool:
        """Return whether a peer ``address`` lies in ``allowed_addresses``."""
        try:
            peer = ipaddress.ip_address(address)
        except ValueError:
            return False
        # An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        return any(peer in ipaddress.ip_network(network) for network in self.allowed_addresses)


class IssuerSystem(_Section):
    """Map of a DICOM Issuer of Patient ID to the FHIR identifier system of those IDs."""

    issuer: Annotated[str, Field(min_length=1, max_length=64)]
    system: Annotated[str, Field(min_length=1)]


class FHIRSettings(_Section):
    """FHIR R4 client that queries clinical text around a study (``[fhir]``)."""

    enabled: bool = False
    base_url: str = ""
    # 0 means analyse at once with whatever text is already there. The node
    # waits this long for HL7 messages as well as for FHIR.
    text_wait_s: Annotated[float, Field(ge=0)] = 60.0
    token_file: Path | None = None
    ca_file: Path | None = None
    timeout_s: _PositiveSeconds = 30.0
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 4
    backoff_initial_s: _PositiveSeconds = 1.0
    backoff_max_s: _PositiveSeconds = 30.0
    page_size: Annotated[int, Field(ge=1, le=1000)] = 50
    max_pages: Annotated[int, Field(ge=1, le=10000)] = 20
    max_attachment_bytes: Annotated[int, Field(ge=1024)] = 5 * 1024 * 1024
    # Identifier system used when the study's issuer is empty or not in issuer_systems;
    # empty searches the patient ID in every system.
    default_identifier_system: str = ""
    issuer_systems: list[IssuerSystem] = Field(default_factory=list)
    # Notes and reports dated in the window count. Conditions, medications and
    # social-history observations are history: those dated up to
    # history_before_days before the study (and window_after_days after it) count.
    window_before_days: _NonNegativeDays = 365.0
    window_after_days: _NonNegativeDays = 7.0
    history_before_days: _NonNegativeDays = 3650.0

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"base_url {value!r} must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _check(self) -> FHIRSettings:
        if self.enabled and not self.base_url:
            raise SettingsKeyError("base_url", "base_url is required with enabled = true")
        if self.backoff_max_s < self.backoff_initial_s:
            raise SettingsKeyError(
                "backoff_max_s",
                f"backoff_max_s {self.backoff_max_s} is below backoff_initial_s "
                f"({self.backoff_initial_s})",
            )
        issuers = [entry.issuer for entry in self.issuer_systems]
        duplicates = sorted({issuer for issuer in issuers if issuers.count(issuer) > 1})
        if duplicates:
            raise SettingsKeyError(
                "issuer_systems", f"issuer_systems lists issuer(s) {duplicates} more than once"
            )
        return self

    def identifier_system(self, issuer: str) -> str:
        """Return the identifier system for a DICOM Issuer of Patient ID ('' for any)."""
        wanted = issuer.strip()
        for entry in self.issuer_systems:
            if entry.issuer == wanted:
                return entry.system
        return self.default_identifier_system
