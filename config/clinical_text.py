"""Settings of the clinical-text sources: ``[hl7]`` and ``[fhir]``.

``hipfuse.integrations`` reads these sections, and the node's
:class:`~hipfuse.config.settings.Settings` uses them as its ``hl7`` and
``fhir`` fields. The shipped ``default.toml`` documents every key.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator, model_validator

from hipfuse.config.fields import (
    IPAddress,
    IPNetwork,
    NonNegativeDays,
    NonNegativeSeconds,
    Port,
    PositiveSeconds,
    Section,
    SettingsKeyError,
)
from hipfuse.config.hl7_charsets import UnknownCharsetError, codec_for_charset


def _check_charset(value: str) -> str:
    try:
        codec_for_charset(value)
    except UnknownCharsetError as exc:
        raise ValueError(str(exc)) from None
    return value


class HL7Settings(Section):
    """HL7 v2 listener over MLLP and watched folder for clinical text (``[hl7]``)."""

    enabled: bool = False
    bind_address: IPAddress = "127.0.0.1"
    # 2575 is the port IANA registered for HL7 over MLLP.
    port: Port = 2575
    allowed_addresses: list[IPNetwork] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    max_connections: Annotated[int, Field(ge=1, le=1000)] = 20
    max_message_bytes: Annotated[int, Field(ge=1024)] = 10 * 1024 * 1024
    idle_timeout_s: PositiveSeconds = 300.0
    # Character set of messages whose MSH-18 is empty: an HL7 Table 0211 value
    # ("UNICODE UTF-8", "GB 18030-2000", "8859/1") or a Python codec name.
    default_charset: Annotated[str, AfterValidator(_check_charset)] = "UNICODE UTF-8"
    # MSH-11 Processing ID values accepted; P is production, T training, D debugging.
    processing_ids: list[Annotated[str, Field(min_length=1, max_length=3)]] = Field(
        default_factory=lambda: ["P"]
    )
    application_name: Annotated[str, Field(min_length=1, max_length=64)] = "HIPFUSE"
    watch_dir: Path | None = None
    watch_stable_s: PositiveSeconds = 2.0
    # Seconds the node waits, from the moment a study is complete, for HL7 text
    # of its patient to arrive before it analyses without; 0 analyses at once.
    text_wait_s: NonNegativeSeconds = 60.0
    # Text of the patient dated this long before or after the study counts
    # when no order number links it to the study. Diagnoses, medications and
    # social history count back to history_before_days.
    window_before_days: NonNegativeDays = 365.0
    window_after_days: NonNegativeDays = 7.0
    history_before_days: NonNegativeDays = 3650.0
    # Days an accepted message (raw bytes and texts) stays in the HL7 store;
    # rejected messages and the watch folder's done/ and failed/ files follow
    # [storage] retention_days.
    retention_days: Annotated[float, Field(gt=0)] = 3650.0

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


class IssuerSystem(Section):
    """Map of a DICOM Issuer of Patient ID to the FHIR identifier system of those IDs."""

    issuer: Annotated[str, Field(min_length=1, max_length=64)]
    system: Annotated[str, Field(min_length=1)]


class FHIRSettings(Section):
    """FHIR R4 client that queries clinical text around a study (``[fhir]``)."""

    enabled: bool = False
    base_url: str = ""
    token_file: Path | None = None
    ca_file: Path | None = None
    timeout_s: PositiveSeconds = 30.0
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 4
    backoff_initial_s: PositiveSeconds = 1.0
    backoff_max_s: PositiveSeconds = 30.0
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
    window_before_days: NonNegativeDays = 365.0
    window_after_days: NonNegativeDays = 7.0
    history_before_days: NonNegativeDays = 3650.0

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
