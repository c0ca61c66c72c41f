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
        missing = [key for key in ("cert_file", "key_file") if getattr(self, key) is None]
        if self.require_client_certificate and self.ca_file is None:
            # The CA file verifies the certificates of the peers that send.
            missing.append("ca_file")
        if not missing:
            return self
        # One error can name one key: the first, with the others in its message.
        reason = (
            "is required with enabled = true"
            if missing[0] != "ca_file"
            else "is required with require_client_certificate = true, to verify the "
            "certificates of the peers that send"
        )
        if len(missing) > 1:
            reason += f" (also missing: {', '.join(missing[1:])})"
        raise SettingsKeyError(missing[0], reason)
