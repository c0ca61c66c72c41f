"""C-STORE SCU: send DICOM files to one peer over one association.

The outbox sender uses :func:`store_files` for results, the health endpoint
checks each destination with :func:`echo`, and ``python -m
hipfuse.node.scu`` sends files from the command line where DCMTK's storescu
is not installed. Each file is sent as stored: one presentation context is
proposed per pair of SOP Class and transfer syntax found in the files, so
nothing is transcoded. A peer with :class:`~hipfuse.node.tls.ClientTLS`
settings is reached over DICOM TLS, with a client context built for each
association.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import structlog
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from hipfuse.config.tls import TLSVersion
from hipfuse.node.tls import ClientTLS, TLSFileError, describe_tls_error

log = structlog.get_logger(__name__)

# Seconds pynetdicom's upper layer sleeps between polls of an idle association,
# for the node's SCP and SCU. 0.1 ms instead of its 1 ms almost halves the time
# a 300-slice CT takes to arrive (bench/bench_ingest.py), for a few per cent of
# a core while an association stays open idle.
DUL_POLL_INTERVAL_S = 0.0001

# Presentation Context IDs are odd numbers from 1 to 255, so one association
# has at most 128 contexts; pynetdicom enforces the same limit.
MAX_CONTEXTS = 128


class StoreStatusCategory(IntEnum):
    """Category of a C-STORE response status (PS3.4 Table B.2-1, PS3.7 Annex C)."""

    SUCCESS = 0
    WARNING = 1
    FAILURE = 2


# Warning statuses besides the Bxxx range: the peer stored the object (PS3.7 Annex C).
_WARNING_STATUSES = frozenset({0x0001, 0xB000, 0xB006, 0xB007})


def status_category(status: int) -> StoreStatusCategory:
    """Return whether a C-STORE status is a success, a warning or a failure."""
    if status == 0x0000:
        return StoreStatusCategory.SUCCESS
    if status in _WARNING_STATUSES or 0xB000 <= status <= 0xBFFF:
        return StoreStatusCategory.WARNING
    return StoreStatusCategory.FAILURE


@dataclass(frozen=True)
class Peer:
    """A peer that receives C-STORE: its address and AE title, this node's AE title, timeouts."""

    called_ae_title: str
    host: str
    port: int
    calling_ae_title: str
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    max_pdu_bytes: int = 0
    tls: ClientTLS | None = None

    def describe(self) -> str:
        """Return ``AE@host:port`` for messages."""
        return f"{self.called_ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class FileToStore:
    """One Part 10 file with the SOP Class and transfer syntax it is sent in."""

    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str

    @classmethod
    def from_path(cls, path: Path | str) -> FileToStore:
        """Read the File Meta Information of ``path``."""
        meta = read_file_meta_info(path)
        return cls(
            Path(path),
            str(meta.MediaStorageSOPClassUID),
            str(meta.TransferSyntaxUID),
        )


@dataclass(frozen=True)
class StoreOutcome:
    """The peer's response for one file: a status, or an error when no response came."""

    path: Path
    status: int | None
    error: str | None = None
    # Seconds from the start of store_files to this response (None without one).
    elapsed_s: float | None = None

    @property
    def stored(self) -> bool:
        """Whether the peer reported success or a warning (the object is stored)."""
        return self.status is not None and status_category(self.status) in (
            StoreStatusCategory.SUCCESS,
            StoreStatusCategory.WARNING,
        )


class AssociationError(RuntimeError):
    """No association could be established with the peer; nothing was sent."""


def _set_no_delay(event: Event) -> None:
    # Nagle's algorithm would hold back each small C-STORE request PDU.
    raw_socket = event.assoc.dul.socket.socket
    if raw_socket is not None:
        raw_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # NOTE: a private attribute of pynetdicom's DULServiceProvider (1 ms by
    # default; the version is pinned below 4). Each negotiation step and
    # response is then noticed within 0.1 ms.
    event.assoc.dul._run_loop_delay = DUL_POLL_INTERVAL_S


def _context_pairs(contexts: Sequence[PresentationContext]) -> list[tuple[str, str]]:
    """Return the (SOP Class, transfer syntax) pairs that ``contexts`` propose, sorted."""
    return sorted(
        (str(context.abstract_syntax), str(syntax))
        for context in contexts
        for syntax in context.transfer_syntax
    )


def open_association(
    peer: Peer, contexts: Sequence[PresentationContext], connection_timeout_s: float | None = None
) -> Association:
    """Open an association with ``peer`` that proposes ``contexts``.

    ``connection_timeout_s`` limits the TCP connect; ``None`` leaves it to the
    operating system.

    Raises
    ------
    AssociationError
        The connection failed, timed out, or the peer rejected or aborted
        the association request.
    """
    ae = AE(ae_title=peer.calling_ae_title)
    ae.acse_timeout = peer.acse_timeout_s
    ae.dimse_timeout = peer.dimse_timeout_s
    ae.network_timeout = peer.network_timeout_s
    ae.maximum_pdu_size = peer.max_pdu_bytes
    ae.connection_timeout = connection_timeout_s
    tls_context = None
    tls_args = None
    if peer.tls is not None:
        try:
            tls_context = peer.tls.build_context()
        except TLSFileError as error:
            raise AssociationError(f"{peer.describe()} not contacted: {error}") from None
        tls_args = (tls_context, peer.tls.server_hostname)
        # Without a limit a peer that accepts TCP but never responds to the
        # handshake would block the sender forever.
        if ae.connection_timeout is None:
            ae.connection_timeout = peer.acse_timeout_s
    # pynetdicom reports a refused connection as an abort, so whether the TCP
    # connection opened at all is tracked here.
    connected = threading.Event()

    def on_connection_open(event: Event) -> None:
        connected.set()
        _set_no_delay(event)

    association = ae.associate(
        peer.host,
        peer.port,
        contexts=contexts,
        ae_title=peer.called_ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, on_connection_open)],
        tls_args=tls_args,
    )
    if not association.is_established:
        handshake_error = tls_context.handshake_error if tls_context is not None else None
        if handshake_error is not None:
            tls_reason = describe_tls_error(handshake_error)
            log.warning(
                "tls_handshake_failed",
                peer_address=peer.host,
                peer_port=peer.port,
                called_ae_title=peer.called_ae_title,
                reason=tls_reason,
            )
            reason = f"TLS handshake failed: {tls_reason}"
        elif not connected.is_set():
            reason = "could not be reached (connection refused or timed out)"
        elif association.is_rejected:
            reason = "rejected the association request"
        elif association.rejected_contexts and not association.accepted_contexts:
            # pynetdicom aborts an association in which no context was accepted.
            reason = (
                "accepts none of the proposed presentation contexts (SOP Class and "
                f"transfer syntax pairs {_context_pairs(contexts)})"
            )
        else:
            reason = "aborted the association request or did not respond to it"
        raise AssociationError(f"{peer.describe()} {reason}")
    return association


def store_files(peer: Peer, files: Sequence[FileToStore]) -> list[StoreOutcome]:
    """Send ``files`` to ``peer`` over one association, in order.

    Returns
    -------
    list of StoreOutcome
        One per file. A file whose context the peer rejected, or that was
        not sent because the association broke, has ``status`` None and an error.

    Raises
    ------
    AssociationError
        The connection failed, timed out, the TLS handshake failed, a TLS
        file cannot be used, or the peer rejected or aborted the association
        request.
    ValueError
        The files need more than 128 presentation contexts.
    """
    started = time.monotonic()
    if not files:
        return []
    pairs = sorted({(item.sop_class_uid, item.transfer_syntax_uid) for item in files})
    if len(pairs) > MAX_CONTEXTS:
        raise ValueError(
            f"{len(pairs)} pairs of SOP Class and transfer syntax need more than "
            f"{MAX_CONTEXTS} presentation contexts; send the files in smaller groups"
        )
    association = open_association(peer, [build_context(s, t) for s, t in pairs])

    accepted = {
        (str(context.abstract_syntax), str(context.transfer_syntax[0]))
        for context in association.accepted_contexts
    }
    outcomes = []
    try:
        for item in files:
            if (item.sop_class_uid, item.transfer_syntax_uid) not in accepted:
                outcomes.append(
                    StoreOutcome(
                        item.path,
                        None,
                        f"{peer.describe()} accepts no presentation context for SOP Class "
                        f"{item.sop_class_uid} in transfer syntax {item.transfer_syntax_uid}",
                    )
                )
                continue
            if not association.is_established:
                outcomes.append(StoreOutcome(item.path, None, "association closed before sending"))
                continue
            response = association.send_c_store(item.path)
            if "Status" not in response:
                outcomes.append(
                    StoreOutcome(
                        item.path,
                        None,
                        f"no C-STORE response from {peer.describe()} (timed out or aborted)",
                    )
                )
                continue
            status = int(response.Status)
            elapsed_s = time.monotonic() - started
            error = None
            if status_category(status) is StoreStatusCategory.FAILURE:
                comment = str(response.get("ErrorComment", "")).strip()
                error = f"{peer.describe()} returned C-STORE status 0x{status:04X}"
                error += f" ({comment})" if comment else ""
            outcomes.append(StoreOutcome(item.path, status, error, elapsed_s))
    finally:
        if association.is_established:
            association.release()
    return outcomes


def echo(peer: Peer, connection_timeout_s: float | None = None) -> int:
    """Send one C-ECHO to ``peer`` and return its status (0 is Success).

    Raises
    ------
    AssociationError
        No association could be established, or the peer sent no C-ECHO
        response (timed out or aborted).
    """
    association = open_association(
        peer, [build_context(Verification)], connection_timeout_s=connection_timeout_s
    )
    try:
        response = association.send_c_echo()
    finally:
        if association.is_established:
            association.release()
    if "Status" not in response:
        raise AssociationError(f"no C-ECHO response from {peer.describe()} (timed out or aborted)")
    return int(response.Status)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``python -m hipfuse.node.scu``."""
    parser = argparse.ArgumentParser(
        prog="python -m hipfuse.node.scu",
        description="Send DICOM Part 10 files to a storage SCP over one association.",
    )
    parser.add_argument("host", help="IP address or host name of the peer")
    parser.add_argument("port", type=int, help="TCP port of the peer")
    parser.add_argument("files", nargs="+", type=Path, help="DICOM files to send")
    parser.add_argument("--aet", default="HIPFUSESCU", help="calling AE title (default HIPFUSESCU)")
    parser.add_argument("--aec", default="ANY-SCP", help="called AE title (default ANY-SCP)")
    tls = parser.add_argument_group("DICOM TLS (off unless --tls-ca-file is given)")
    tls.add_argument(
        "--tls-ca-file",
        type=Path,
        help="PEM file of CA certificates that verify the peer; turns TLS on",
    )
    tls.add_argument("--tls-cert-file", type=Path, help="PEM client certificate (default none)")
    tls.add_argument("--tls-key-file", type=Path, help="PEM private key of --tls-cert-file")
    tls.add_argument(
        "--tls-min-version",
        choices=[version.value for version in TLSVersion],
        default=TLSVersion.TLS_1_2.value,
        help="lowest TLS version offered (default 1.2)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Send the files; exit status 1 when any was not stored, 2 when no association opened."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.tls_cert_file is None) != (args.tls_key_file is None):
        parser.error("give both --tls-cert-file and --tls-key-file, or neither")
    if args.tls_cert_file is not None and args.tls_ca_file is None:
        parser.error("--tls-cert-file needs --tls-ca-file, which turns TLS on")
    tls = None
    if args.tls_ca_file is not None:
        tls = ClientTLS(
            ca_file=args.tls_ca_file,
            cert_file=args.tls_cert_file,
            key_file=args.tls_key_file,
            min_version=TLSVersion(args.tls_min_version),
            server_hostname=args.host,
            prefix="",
        )
    peer = Peer(args.aec, args.host, args.port, args.aet, tls=tls)
    try:
        outcomes = store_files(peer, [FileToStore.from_path(path) for path in args.files])
    except AssociationError as error:
        print(f"association failed: {error}", file=sys.stderr)
        return 2
    failed = 0
    for outcome in outcomes:
        if outcome.stored:
            print(f"stored {outcome.path} (status 0x{outcome.status:04X})")
        else:
            failed += 1
            print(f"not stored {outcome.path}: {outcome.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
