"""Settings of the DICOM node, read from a TOML file with environment overrides.

The shipped ``default.toml`` beside this module documents every key with its
unit and default. ``load_settings`` reads a file (the shipped defaults when no
path is given), applies environment variables on top and reports every invalid
key at once in one :class:`SettingsError`. The ``[hl7]`` and ``[fhir]``
sections are defined in :mod:`hipfuse.config.clinical_text`, ``[node.tls]`` in
:mod:`hipfuse.config.tls`, ``[dropfolder]`` in :mod:`hipfuse.config.dropfolder`,
and the field types shared by all sections in :mod:`hipfuse.config.fields`.

Environment variables use the prefix ``HIPFUSE_`` and ``__`` between levels:
``HIPFUSE_NODE__PORT=11113`` sets ``[node] port``. Lists of tables take JSON:
``HIPFUSE_DESTINATIONS='[{"name": "pacs", "ae_title": "PACS", "host": "10.0.0.5",
"port": 104}]'``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from contextvars import ContextVar
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from hipfuse.config.clinical_text import FHIRSettings, HL7Settings
from hipfuse.config.dropfolder import DropFolderSettings
from hipfuse.config.fields import (
    AETitle,
    HostName,
    IPAddress,
    IPNetwork,
    Port,
    PositiveBytes,
    PositiveSeconds,
    Section,
    SettingsKeyError,
)
from hipfuse.config.tls import NodeTLSSettings, TLSVersion

ENV_PREFIX = "HIPFUSE_"
ENV_NESTED_DELIMITER = "__"
DEFAULT_SETTINGS_RESOURCE = "default.toml"

_DEVICE = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?|mps)$")


class SettingsError(ValueError):
    """Invalid settings; ``problems`` lists ``(dotted key path, reason)`` pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"invalid settings in {source} ({len(problems)} problems):"]
        lines += [f"  {path}: {reason}" for path, reason in problems]
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- #
# Field validators
# --------------------------------------------------------------------------- #


def _check_max_pdu(value: int) -> int:
    # 0 means no limit (PS3.8 Table 9-16); 4096 is DCMTK's smallest accepted value.
    if value != 0 and not 4096 <= value <= 2**32 - 1:
        raise ValueError(f"{value} must be 0 (no limit) or between 4096 and 4294967295")
    return value


def _check_device(value: str) -> str:
    if not _DEVICE.match(value):
        raise ValueError(f"device {value!r} must be auto, cpu, cuda, cuda:N or mps")
    return value


class LogLevel(StrEnum):
    """Minimum level of the log lines written."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


# --------------------------------------------------------------------------- #
# Sections
# --------------------------------------------------------------------------- #


class AllowedCaller(Section):
    """One peer allowed to open associations: its AE title, source addresses and certificate."""

    ae_title: AETitle
    addresses: list[IPNetwork] = Field(default_factory=list)
    # Names its TLS client certificate must carry (subject common name, or a
    # DNS or IP subject alternative name); empty: any certificate ca_file verifies.
    certificate_names: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        default_factory=list
    )

    def allows(self, address: str) -> bool:
        """Return whether ``address`` is in this caller's networks (any address if none)."""
        if not self.addresses:
            return True
        try:
            peer = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(peer in ipaddress.ip_network(network) for network in self.addresses)


class NodeSettings(Section):
    """The receiving DICOM Application Entity (``[node]``)."""

    ae_title: AETitle = "HIPFUSE"
    bind_address: IPAddress = "127.0.0.1"
    port: Port = 11112
    max_associations: Annotated[int, Field(ge=1, le=1000)] = 10
    max_pdu_bytes: Annotated[int, AfterValidator(_check_max_pdu)] = 1_048_576
    dimse_timeout_s: PositiveSeconds = 60.0
    acse_timeout_s: PositiveSeconds = 30.0
    network_timeout_s: PositiveSeconds = 60.0
    max_study_bytes: PositiveBytes = 4 * 1024**3
    require_called_ae_title: bool = False
    allowed_callers: list[AllowedCaller] = Field(default_factory=list)
    tls: NodeTLSSettings = Field(default_factory=NodeTLSSettings)

    @model_validator(mode="after")
    def _check_callers(self) -> NodeSettings:
        titles = [caller.ae_title for caller in self.allowed_callers]
        duplicates = sorted({title for title in titles if titles.count(title) > 1})
        if duplicates:
            raise SettingsKeyError(
                "allowed_callers",
                f"AE title(s) {duplicates} appear more than once; "
                "merge their addresses into one entry",
            )
        named = [caller.ae_title for caller in self.allowed_callers if caller.certificate_names]
        if named and not (self.tls.enabled and self.tls.require_client_certificate):
            raise SettingsKeyError(
                "allowed_callers",
                f"certificate_names is set for {named}, but the listener does not require "
                "client certificates; set [node.tls] enabled = true and "
                "require_client_certificate = true, or remove certificate_names",
            )
        return self

    def find_caller(self, ae_title: str) -> AllowedCaller | None:
        """Return the allow-list entry for ``ae_title`` (trailing spaces ignored)."""
        wanted = ae_title.strip()
        for caller in self.allowed_callers:
            if caller.ae_title == wanted:
                return caller
        return None


class Destination(Section):
    """A peer that receives the node's results by C-STORE (``[[destinations]]``)."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    ae_title: AETitle
    host: HostName
    port: Port
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_min_version: TLSVersion = TLSVersion.TLS_1_2

    @model_validator(mode="after")
    def _check_tls_files(self) -> Destination:
        if self.tls and self.tls_ca_file is None:
            raise SettingsKeyError(
                "tls_ca_file", "is required with tls = true to verify the peer's certificate"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise SettingsKeyError(
                "tls_key_file", "set both tls_cert_file and tls_key_file, or neither"
            )
        return self


class StudySettings(Section):
    """When a received study counts as complete (``[study]``)."""

    quiet_period_s: PositiveSeconds = 30.0
    complete_when_expected_series_present: bool = False


class StorageSettings(Section):
    """Spool, job store and retention (``[storage]``)."""

    data_dir: Path = Path("/var/lib/hipfuse")
    min_free_bytes: Annotated[int, Field(ge=0)] = 1024**3
    retention_days: Annotated[float, Field(gt=0)] = 30.0
    housekeeping_interval_s: PositiveSeconds = 600.0


class ModelSettings(Section):
    """Model bundle and compute device (``[model]``)."""

    bundle_dir: Path | None = None
    device: Annotated[str, AfterValidator(_check_device)] = "auto"
    watch_bundle: bool = True
    watch_settle_s: PositiveSeconds = 5.0


class SendSettings(Section):
    """Retries of C-STORE to the destinations (``[send]``)."""

    max_attempts: Annotated[int, Field(ge=1)] = 10
    backoff_initial_s: PositiveSeconds = 30.0
    backoff_max_s: PositiveSeconds = 3600.0

    @model_validator(mode="after")
    def _check_backoff(self) -> SendSettings:
        if self.backoff_max_s < self.backoff_initial_s:
            raise SettingsKeyError(
                "backoff_max_s",
                f"{self.backoff_max_s} is below backoff_initial_s ({self.backoff_initial_s})",
            )
        return self


class HttpSettings(Section):
    """Admin HTTP endpoint with ``/healthz`` and ``/metrics`` (``[http]``)."""

    enabled: bool = True
    bind_address: IPAddress = "127.0.0.1"
    # 11180: unprivileged, beside the DICOM port 11112 so firewall rules can
    # group them, and outside 9100-9999, which Prometheus's list of default
    # exporter ports has allocated in full. 0 lets the operating system choose.
    port: Annotated[int, Field(ge=0, le=65535)] = 11180
    echo_interval_s: PositiveSeconds = 60.0
    echo_max_age_s: PositiveSeconds = 180.0

    @model_validator(mode="after")
    def _check_echo_ages(self) -> HttpSettings:
        if self.echo_max_age_s <= self.echo_interval_s:
            raise SettingsKeyError(
                "echo_max_age_s",
                f"{self.echo_max_age_s} must be above echo_interval_s ({self.echo_interval_s}), "
                "or every destination fails the health check between two echoes",
            )
        return self


class LoggingSettings(Section):
    """Log level and format (``[logging]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    level: LogLevel = LogLevel.INFO
    # The key is ``json`` in the file; the attribute name avoids BaseModel.json.
    json_lines: bool = Field(default=True, alias="json")


# --------------------------------------------------------------------------- #
# Top level and loading
# --------------------------------------------------------------------------- #

# The parsed TOML file for the settings being loaded; a context variable keeps
# concurrent loads in different threads apart.
_file_values: ContextVar[dict[str, Any] | None] = ContextVar("hipfuse_settings_file", default=None)


class _TomlFileSource(PydanticBaseSettingsSource):
    """Values from the TOML file, below the environment in priority."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (_file_values.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_values.get() or {})


class Settings(BaseSettings):
    """All node settings; build with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    node: NodeSettings = Field(default_factory=NodeSettings)
    destinations: list[Destination] = Field(default_factory=list)
    study: StudySettings = Field(default_factory=StudySettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    hl7: HL7Settings = Field(default_factory=HL7Settings)
    fhir: FHIRSettings = Field(default_factory=FHIRSettings)
    dropfolder: DropFolderSettings = Field(default_factory=DropFolderSettings)
    send: SendSettings = Field(default_factory=SendSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @model_validator(mode="after")
    def _check_destination_names(self) -> Settings:
        names = [destination.name for destination in self.destinations]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise SettingsKeyError("destinations", f"name(s) {duplicates} are used more than once")
        return self

    @model_validator(mode="after")
    def _check_listener_ports(self) -> Settings:
        # Every listener the node opens: (dotted key of the port, address, port).
        listeners = [("node.port", self.node.bind_address, self.node.port)]
        if self.hl7.enabled:
            listeners.append(("hl7.port", self.hl7.bind_address, self.hl7.port))
        if self.http.enabled:
            listeners.append(("http.port", self.http.bind_address, self.http.port))
        # Port 0 lets the operating system choose a free port, so it never clashes.
        listeners = [listener for listener in listeners if listener[2] != 0]
        for index, (key, address, port) in enumerate(listeners):
            for other_key, other_address, other_port in listeners[:index]:
                # A wildcard address takes the port on every address.
                wildcard = {"0.0.0.0", "::"} & {str(address), str(other_address)}
                if port == other_port and (address == other_address or wildcard):
                    raise SettingsKeyError(
                        key,
                        f"port {port} is also {other_key} on {other_address}; "
                        "give each listener its own port",
                    )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order the sources: constructor arguments, then environment, then the file."""
        return (init_settings, env_settings, _TomlFileSource(settings_cls))


def default_settings_text() -> str:
    """Return the text of the shipped ``default.toml``."""
    return (
        resources.files("hipfuse.config")
        .joinpath(DEFAULT_SETTINGS_RESOURCE)
        .read_text(encoding="utf-8")
    )


def load_settings(path: Path | str | None = None) -> Settings:
    """Read settings from a TOML file and apply ``HIPFUSE_*`` environment overrides.

    Parameters
    ----------
    path
        TOML file; ``None`` reads the shipped ``default.toml``. Keys missing
        from the file keep their defaults.

    Returns
    -------
    Settings
        The validated, frozen settings.

    Raises
    ------
    SettingsError
        The file is missing or not TOML, or one or more keys are invalid. The
        error lists every invalid key with its dotted path and the reason.
    """
    if path is None:
        source = f"shipped {DEFAULT_SETTINGS_RESOURCE}"
        text = default_settings_text()
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(source, [("(file)", f"cannot be read: {exc.strerror}")]) from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        reason = f"is not valid TOML: {exc}"
        if "Cannot declare" in str(exc):
            # The usual cause: two entries of a list written [x] instead of [[x]].
            reason += "; write each entry of a list, such as an allowed caller, as [[table]]"
        raise SettingsError(source, [("(file)", reason)]) from None

    token = _file_values.set(values)
    try:
        return Settings()
    except ValidationError as exc:
        problems = [_with_variable(*_problem(error)) for error in exc.errors()]
        if any(name.startswith(ENV_PREFIX) for name in os.environ):
            source += f" and {ENV_PREFIX}* environment"
        raise SettingsError(source, problems) from None
    finally:
        _file_values.reset(token)


def _with_variable(path: str, reason: str) -> tuple[str, str]:
    """Name the environment variable in a problem whose key it sets."""
    if "[" in path or path.startswith("("):
        return path, reason
    variable = ENV_PREFIX + path.upper().replace(".", "__")
    if variable in os.environ:
        return path, f"{reason}; the value comes from the environment variable {variable}"
    return path, reason


def _dotted_path(location: tuple[int | str, ...]) -> str:
    """Turn a pydantic error location into ``node.allowed_callers[0].ae_title``."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _problem(error: Any) -> tuple[str, str]:
    location = tuple(error["loc"])
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, SettingsKeyError) and cause.key not in location:
        location += (cause.key,)
    return _dotted_path(location), _reason(error)


def _reason(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key; check the spelling against default.toml"
    message = str(error["msg"])
    # Pydantic prefixes messages raised by validators with "Value error, ".
    message = message.removeprefix("Value error, ")
    if error["type"] in ("value_error", "assertion_error"):
        return message
    if error["type"] == "list_type" and isinstance(error.get("input"), dict):
        # A TOML table written [x] where the key takes an array of tables [[x]].
        table = _dotted_path(tuple(error["loc"]))
        return f"{message}: write each entry as [[{table}]], with double brackets"
    return f"{message} (got {error.get('input')!r})"
