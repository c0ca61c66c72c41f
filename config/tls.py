"""Settings of DICOM TLS on the node's listener (``[node.tls]``) and the TLS version enum.

The destinations' TLS keys (``tls``, ``tls_ca_file``, ``tls_cert_file``,
``tls_key_file``, ``tls_min_version``) sit on each ``[[destinations]]`` table
in :mod:`hipfuse.config.settings`. This module checks only which keys must be
set together. Whether the files exist, can be read, match and are valid today
is checked at run time by :mod:`hipfuse.node.tls`.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import model_validator

from hipfuse.config.fields import Section, SettingsKeyError


class TLSVersion(StrEnum):
    """Lowest TLS protocol version a connection may use.

    TLS 1.0 and 1.1 are not offered because RFC 8996 (BCP 195) deprecates them.
    """

    TLS_1_2 = "1.2"
    TLS_1_3 = "1.3"


class NodeTLSSettings(Section):
    """DICOM TLS on the storage SCP (``[node.tls]``)."""

    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    require_client_certificate: bool = True
    min_version: TLSVersion = TLSVersion.TLS_1_2

    @model_validator(mode="after")
    def _check_files(self) -> NodeTLSSettings:
        if not self.enabled:
            return self
        if self.cert_file is None:
            raise SettingsKeyError("cert_file", "is required with enabled = true")
        if self.key_file is None:
            raise SettingsKeyError("key_file", "is required with enabled = true")
        if self.require_client_certificate and self.ca_file is None:
            raise SettingsKeyError(
                "ca_file",
                "is required with require_client_certificate = true, to verify the "
                "certificates of the peers that send",
            )
        return self
