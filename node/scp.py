"""Storage SCP of the node: accept C-ECHO and C-STORE from allowed callers.

Each received instance is spooled (temporary file, fsync, rename) and recorded
in the job store before the SCP returns Success, so an acknowledged instance
survives a crash. The data set is written exactly as received, in its transfer
syntax; only the header is parsed (:mod:`hipfuse.node.header`), never the
pixel data.

Statuses returned to the sender:

========  ==========================================================
``0000``  Success: spooled and recorded.
``A700``  Refused, Out of Resources: the study would pass
          ``max_study_bytes``, free disk space would drop below
          ``min_free_bytes``, or writing the file or record failed.
``A900``  Data Set does not match SOP Class: the SOP Class or SOP
          Instance UID in the data set differs from the request.
``C000``  Cannot understand: the data set cannot be parsed, or a
          Study, Series or SOP Instance UID is invalid.
========  ==========================================================
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any

import structlog
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from hipfuse.config.settings import AllowedCaller, Settings
from hipfuse.node.audit import association_details, rejection_reason
from hipfuse.node.header import HeaderError, read_header
from hipfuse.node.jobstore import InstanceRecord, JobStore, StudyTooLargeError
from hipfuse.node.scu import DUL_POLL_INTERVAL_S
from hipfuse.node.series import is_node_output
from hipfuse.node.spool import (
    InstanceUIDs,
    InvalidUIDError,
    Spool,
    encode_file_meta,
    validate_uid,
)
from hipfuse.node.tls import build_server_context
from hipfuse.node.tls_server import (
    TLSAssociationServer,
    peer_certificate_names,
    start_tls_server,
)

if TYPE_CHECKING:
    from pynetdicom.association import Association

    from hipfuse.config.tls import NodeTLSSettings
    from hipfuse.node.metrics import NodeMetrics

log = structlog.get_logger(__name__)

# Transfer syntaxes accepted for storage. The sender's first proposed syntax
# that is in this list is used, and the data set is stored in it unchanged.
STORAGE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
_VERIFICATION_TRANSFER_SYNTAXES = (ImplicitVRLittleEndian, ExplicitVRLittleEndian)
# Error Comment (0000,0902) is LO: at most 64 characters.
_ERROR_COMMENT_MAX = 64
_STUDY_LOCK_STRIPES = 64
# The A700 reason that storing the same instance again later cannot resolve.
_STUDY_TOO_LARGE = "study over max_study_bytes"


class StoreStatus(IntEnum):
    """C-STORE response statuses used by the node (PS3.4 Table B.2-1)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


class RejectReason(StrEnum):
    """Reason an association was rejected, logged and recorded as an event."""

    CALLING_AE_TITLE_NOT_RECOGNISED = "calling_ae_title_not_recognised"
    PEER_ADDRESS_NOT_ALLOWED = "peer_address_not_allowed"
    CLIENT_CERTIFICATE_NOT_ALLOWED = "client_certificate_not_allowed"


# A-ASSOCIATE-RJ: result 1 (rejected-permanent), source 1 (service user),
# reason 3 (calling AE title not recognised), PS3.8 Table 9-21. A peer address
# or client certificate outside the allow-list has no reason code of its own,
# so it gets the same.
_REJECT_CALLING_AE = (0x01, 0x01, 0x03)


@dataclass
class _AssociationCounts:
    stored: int = 0
    failed: int = 0


@dataclass(frozen=True)
class StoreOutcome:
    """Outcome of :meth:`StorageSCP.store_part10`: a C-STORE status and its Error Comment.

    ``retry_later`` is true when the instance itself was fine and storing it
    later may succeed: free disk space ran low, or the spool write or the job
    store failed.
    """

    status: StoreStatus
    comment: str | None = None
    retry_later: bool = False
    # The full reason, where the Error Comment (64 characters at most) shortens it.
    detail: str | None = None


class ScpServer:
    """A running SCP; stop it with :meth:`stop`."""

    def __init__(
        self, ae: AE, server: ThreadedAssociationServer, storage_scp: StorageSCP | None = None
    ) -> None:
        self.ae = ae
        self._server = server
        # The handlers: the drop folder stores through them, and a reload swaps their settings.
        self.storage_scp = storage_scp

    @property
    def port(self) -> int:
        """TCP port the SCP listens on (useful when started with port 0)."""
        return int(self._server.server_address[1])

    @property
    def is_listening(self) -> bool:
        """Whether the listening socket is open and in the listen state."""
        listener = self._server.socket
        if listener.fileno() == -1:
            return False
        # SO_ACCEPTCONN (Linux) is 1 while the socket accepts connections.
        return bool(listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))

    @property
    def uses_tls(self) -> bool:
        """Whether the SCP listens with DICOM TLS."""
        return isinstance(self._server, TLSAssociationServer)

    def reload_tls(self, tls: NodeTLSSettings) -> None:
        """Read the certificate, key and CA files again for the next connections.

        A renewed certificate written over the old files takes effect without a
        restart. Open associations keep the certificate they started with.

        Raises
        ------
        hipfuse.node.tls.TLSFileError
            A file cannot be used; the listener keeps its current certificate.
        """
        if not isinstance(self._server, TLSAssociationServer):
            raise RuntimeError("the SCP listens without TLS; enabling TLS needs a restart")
        # The accepting thread reads ssl_context for each connection, so one
        # assignment switches every later handshake to the new files.
        self._server.ssl_context = build_server_context(tls)
        log.info("tls_certificates_reloaded", port=self.port, cert_file=str(tls.cert_file))

    def stop(self) -> None:
        """Stop accepting associations and abort the ones still open.

        Instances not yet acknowledged are lost on purpose, because the
        sender still has them and sends them again.
        """
        self._server.shutdown()
        for association in list(self.ae.active_associations):
            association.abort()
        log.info("scp_stopped", port=self.port)


class StorageSCP:
    """Event handlers of the storage SCP; :meth:`start` wires them to a pynetdicom AE.

    Parameters
    ----------
    settings
        Node settings (``[node]`` and ``[storage]`` are read).
    jobstore, spool
        Where instances are recorded and written.
    clock
        Seconds since the epoch for ``received_at``; tests pass a controllable one.
    on_stored
        Called after each instance is recorded (it wakes the study assembler).
    metrics
        Counts stored instances and rejected associations; ``None`` counts nothing.
    """

    def __init__(
        self,
        settings: Settings,
        jobstore: JobStore,
        spool: Spool,
        clock: Callable[[], float] = time.time,
        on_stored: Callable[[], None] | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.jobstore = jobstore
        self.spool = spool
        self.clock = clock
        self.on_stored = on_stored
        self.metrics = metrics
        self._study_locks = [threading.Lock() for _ in range(_STUDY_LOCK_STRIPES)]
        self._counts: weakref.WeakKeyDictionary[Any, _AssociationCounts] = (
            weakref.WeakKeyDictionary()
        )

    def build_ae(self) -> AE:
        """Return an AE configured from ``[node]`` with storage and verification contexts."""
        node = self.settings.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_associations = node.max_associations
        ae.maximum_pdu_size = node.max_pdu_bytes
        ae.dimse_timeout = node.dimse_timeout_s
        ae.acse_timeout = node.acse_timeout_s
        ae.network_timeout = node.network_timeout_s
        ae.require_called_aet = node.require_called_ae_title
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, list(STORAGE_TRANSFER_SYNTAXES))
        ae.add_supported_context(Verification, list(_VERIFICATION_TRANSFER_SYNTAXES))
        return ae

    def start(self) -> ScpServer:
        """Start listening on ``[node] bind_address:port`` in background threads."""
        node = self.settings.node
        if not node.allowed_callers:
            log.warning(
                "no_allowed_callers",
                message="node.allowed_callers is empty, so every association is rejected",
            )
        ae = self.build_ae()
        handlers = [
            (evt.EVT_CONN_OPEN, self.handle_connection_open),
            (evt.EVT_REQUESTED, self.handle_association_requested),
            (evt.EVT_ACCEPTED, self.handle_association_accepted),
            (evt.EVT_REJECTED, self.handle_association_rejected),
            (evt.EVT_RELEASED, self.handle_association_closed),
            (evt.EVT_ABORTED, self.handle_association_closed),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
        ]
        address = (node.bind_address, node.port)
        if node.tls.enabled:
            server = start_tls_server(
                ae,
                address,
                handlers,
                node.tls,
                handshake_timeout_s=node.acse_timeout_s,
                on_handshake_failed=(
                    self.metrics.tls_handshake_failed if self.metrics is not None else None
                ),
            )
        else:
            server = ae.start_server(address, block=False, evt_handlers=handlers)
        assert server is not None
        scp = ScpServer(ae, server, self)
        log.info(
            "scp_started",
            ae_title=node.ae_title,
            bind_address=node.bind_address,
            port=scp.port,
            max_pdu_bytes=node.max_pdu_bytes,
            tls=node.tls.enabled,
            allowed_callers=[caller.ae_title for caller in node.allowed_callers],
        )
        return scp

    # ------------------------------------------------------------------ #
    # Association events
    # ------------------------------------------------------------------ #

    def handle_connection_open(self, event: Event) -> None:
        """Tune the connection for a stream of C-STOREs.

        Nagle's algorithm is turned off, as it otherwise delays each C-STORE
        response. pynetdicom's upper layer polls its socket and queues, and
        sleeps between polls when idle, so a shorter sleep lets it notice
        the next PDU and send each response sooner.
        """
        raw_socket = event.assoc.dul.socket.socket
        if raw_socket is not None:
            raw_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The same private pynetdicom attribute the SCU sets (hipfuse.node.scu).
        event.assoc.dul._run_loop_delay = DUL_POLL_INTERVAL_S

    def handle_association_requested(self, event: Event) -> None:
        """Reject callers that are not on ``[node] allowed_callers``."""
        association = event.assoc
        calling = str(association.requestor.primitive.calling_ae_title).strip()
        address = str(association.requestor.address)
        caller = self.settings.node.find_caller(calling)
        if caller is None:
            reason = RejectReason.CALLING_AE_TITLE_NOT_RECOGNISED
        elif not caller.allows(address):
            reason = RejectReason.PEER_ADDRESS_NOT_ALLOWED
        elif caller.certificate_names and not _certificate_matches(association, caller):
            reason = RejectReason.CLIENT_CERTIFICATE_NOT_ALLOWED
        else:
            _prefer_requested_transfer_syntaxes(association)
            return
        extra: dict[str, Any] = {}
        if reason is RejectReason.CLIENT_CERTIFICATE_NOT_ALLOWED:
            # Node names, not patient data: they tell the admin what to list.
            names = peer_certificate_names(association.dul.socket.socket)
            extra["certificate_names"] = sorted(names) if names is not None else None
        log.warning(
            "association_rejected",
            calling_ae_title=calling,
            peer_address=address,
            reason=reason.value,
            **extra,
        )
        if self.metrics is not None:
            self.metrics.association_rejected(reason.value)
        self.jobstore.record_event(
            "association_rejected",
            details={**association_details(association), "reason": reason},
        )
        # The same steps pynetdicom takes for its own rejections: send the
        # A-ASSOCIATE-RJ, then wait until the upper layer is idle again.
        association.acse.send_reject(*_REJECT_CALLING_AE)
        association.kill()

    def handle_association_accepted(self, event: Event) -> None:
        """Log the accepted association and record it in the audit trail."""
        self._counts[event.assoc] = _AssociationCounts()
        log.info(
            "association_accepted",
            calling_ae_title=str(event.assoc.requestor.ae_title).strip(),
            peer_address=str(event.assoc.requestor.address),
        )
        self.jobstore.record_event("association_accepted", details=association_details(event.assoc))

    def handle_association_rejected(self, event: Event) -> None:
        """Log rejections made by pynetdicom itself (association limit, called AE title)."""
        primitive = event.assoc.acceptor.primitive
        log.warning(
            "association_rejected",
            calling_ae_title=str(event.assoc.requestor.ae_title).strip(),
            peer_address=str(event.assoc.requestor.address),
            result=getattr(primitive, "result", None),
            source=getattr(primitive, "result_source", None),
            diagnostic=getattr(primitive, "diagnostic", None),
        )
        if self.metrics is not None:
            self.metrics.association_rejected_by_protocol(
                getattr(primitive, "result_source", None), getattr(primitive, "diagnostic", None)
            )
        self.jobstore.record_event(
            "association_rejected",
            details={**association_details(event.assoc), "reason": rejection_reason(event.assoc)},
        )

    def handle_association_closed(self, event: Event) -> None:
        """Log the end of an association with its instance counts."""
        counts = self._counts.pop(event.assoc, _AssociationCounts())
        log.info(
            "association_released" if event.event is evt.EVT_RELEASED else "association_aborted",
            calling_ae_title=str(event.assoc.requestor.ae_title).strip(),
            peer_address=str(event.assoc.requestor.address),
            instances_stored=counts.stored,
            instances_failed=counts.failed,
        )
        self.jobstore.record_event(
            "association_released" if event.event is evt.EVT_RELEASED else "association_aborted",
            details={
                **association_details(event.assoc),
                "instances_stored": counts.stored,
                "instances_failed": counts.failed,
            },
        )

    # ------------------------------------------------------------------ #
    # DIMSE services
    # ------------------------------------------------------------------ #

    def handle_echo(self, event: Event) -> int:
        """Return Success to a C-ECHO request."""
        return StoreStatus.SUCCESS

    def handle_store(self, event: Event) -> int | Dataset:
        """Spool and record one instance; Success only after both are durable."""
        status = self._store(event)
        counts = self._counts.get(event.assoc)
        if counts is not None:
            if int(status.Status) == StoreStatus.SUCCESS:
                counts.stored += 1
            else:
                counts.failed += 1
        return status

    def _store(self, event: Event) -> Dataset:
        received_at = self.clock()
        association = event.assoc
        calling = str(association.requestor.ae_title).strip()
        peer = str(association.requestor.address)
        request = event.request
        ids = {
            "calling_ae_title": calling,
            "peer_address": peer,
            "sop_instance_uid": str(request.AffectedSOPInstanceUID),
        }

        try:
            requested_instance = validate_uid("AffectedSOPInstanceUID", ids["sop_instance_uid"])
            requested_class = validate_uid("AffectedSOPClassUID", request.AffectedSOPClassUID)
        except InvalidUIDError as exc:
            log.warning("instance_rejected", **ids, status="C000", error=str(exc))
            return _status(StoreStatus.CANNOT_UNDERSTAND, f"invalid {exc.keyword}")

        transfer_syntax = str(event.context.transfer_syntax)
        meta = encode_file_meta(requested_class, requested_instance, transfer_syntax, calling)
        part10 = b"".join((meta, event.encoded_dataset(include_meta=False)))
        outcome = self.store_part10(
            part10,
            requested_class=requested_class,
            requested_instance=requested_instance,
            transfer_syntax=transfer_syntax,
            calling=calling,
            peer=peer,
            received_at=received_at,
            ids=ids,
        )
        return _status(outcome.status, outcome.comment)

    def store_part10(
        self,
        part10: bytes,
        *,
        requested_class: str,
        requested_instance: str,
        transfer_syntax: str,
        calling: str,
        peer: str,
        received_at: float,
        ids: dict[str, Any],
    ) -> StoreOutcome:
        """Parse, check, spool and record one Part 10 instance, as a C-STORE is handled.

        The C-STORE handler and the drop folder both store through this method.

        Parameters
        ----------
        part10
            Preamble, File Meta Information and data set, written to the spool unchanged.
        requested_class, requested_instance
            Valid SOP Class and SOP Instance UIDs that the data set must
            contain: the C-STORE request's Affected SOP Class and Instance UIDs,
            or a file's Media Storage SOP Class and Instance UIDs.
        transfer_syntax
            Transfer Syntax UID of the data set, as recorded in the job store.
        calling, peer
            Calling AE title and peer address recorded with the instance.
        received_at
            Seconds since the epoch.
        ids
            Keys of every log line (never patient attributes); the Study and
            Series Instance UIDs are added.
        """
        try:
            header = read_header(part10)
        except HeaderError as exc:
            log.warning("instance_rejected", **ids, status="C000", error=str(exc))
            return StoreOutcome(
                StoreStatus.CANNOT_UNDERSTAND, "data set cannot be parsed", detail=str(exc)
            )

        try:
            uids = InstanceUIDs.validated(
                header.get("StudyInstanceUID"),
                header.get("SeriesInstanceUID"),
                header.get("SOPInstanceUID"),
            )
            sop_class = validate_uid("SOPClassUID", header.get("SOPClassUID"))
        except InvalidUIDError as exc:
            log.warning("instance_rejected", **ids, status="C000", error=str(exc))
            return StoreOutcome(
                StoreStatus.CANNOT_UNDERSTAND, f"invalid {exc.keyword}", detail=str(exc)
            )

        if uids.sop_instance_uid != requested_instance:
            mismatch = "SOP Instance UID differs from the request"
        elif sop_class != requested_class:
            mismatch = "SOP Class UID differs from the request"
        else:
            mismatch = None
        if mismatch:
            log.warning("instance_rejected", **ids, status="A900", error=mismatch)
            return StoreOutcome(StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, mismatch)

        ids["study_instance_uid"] = uids.study_instance_uid
        ids["series_instance_uid"] = uids.series_instance_uid
        lock = self._study_locks[hash(uids.study_instance_uid) % _STUDY_LOCK_STRIPES]
        with lock:
            refusal = self._check_resources(uids, len(part10))
            if refusal:
                log.warning("instance_refused", **ids, status="A700", reason=refusal)
                return StoreOutcome(
                    StoreStatus.OUT_OF_RESOURCES,
                    refusal,
                    retry_later=refusal != _STUDY_TOO_LARGE,
                )
            try:
                spooled = self.spool.store_instance(uids, [part10])
            except OSError as exc:
                log.error("instance_store_failed", **ids, error=str(exc))
                return StoreOutcome(
                    StoreStatus.OUT_OF_RESOURCES, "spool write failed", retry_later=True
                )

            record = InstanceRecord(
                sop_instance_uid=uids.sop_instance_uid,
                sop_class_uid=sop_class,
                study_instance_uid=uids.study_instance_uid,
                series_instance_uid=uids.series_instance_uid,
                path=spooled.path,
                size_bytes=spooled.size_bytes,
                transfer_syntax_uid=transfer_syntax,
                received_at=received_at,
                calling_ae_title=calling,
                peer_address=peer,
                header=header.attributes,
                is_node_output=is_node_output(header.attributes),
            )
            try:
                outcome = self.jobstore.record_instance(
                    record, max_study_bytes=self.settings.node.max_study_bytes
                )
            except (StudyTooLargeError, sqlite3.Error) as exc:
                if not spooled.replaced_existing:
                    self.spool.remove(spooled.path)
                log.error("instance_record_failed", **ids, error=str(exc))
                return StoreOutcome(
                    StoreStatus.OUT_OF_RESOURCES,
                    "job store refused the instance",
                    retry_later=isinstance(exc, sqlite3.Error),
                )
            if outcome.superseded_path is not None:
                self.spool.remove(outcome.superseded_path)
        if self.on_stored is not None:
            self.on_stored()

        if outcome.study_created:
            log.info("study_receiving", **ids)
        elif outcome.study_reopened:
            log.info("study_reopened", **ids)
        log.debug(
            "instance_stored",
            **ids,
            size_bytes=spooled.size_bytes,
            replaced=not outcome.created,
            unreadable_attributes=list(header.unreadable) or None,
        )
        if self.metrics is not None:
            self.metrics.instance_received()
        return StoreOutcome(StoreStatus.SUCCESS)

    def _check_resources(self, uids: InstanceUIDs, size_bytes: int) -> str | None:
        """Return why storing ``size_bytes`` more is refused, or ``None``."""
        projected = self.jobstore.projected_study_bytes(
            uids.study_instance_uid, uids.sop_instance_uid, size_bytes
        )
        if projected > self.settings.node.max_study_bytes:
            return _STUDY_TOO_LARGE
        try:
            free = shutil.disk_usage(self.spool.root).free
        except OSError as exc:
            return f"spool folder unusable: {exc.strerror}"
        if free - size_bytes < self.settings.storage.min_free_bytes:
            return "free disk space below min_free_bytes"
        return None


def _certificate_matches(association: Association, caller: AllowedCaller) -> bool:
    """Return whether the association's TLS client certificate carries a name ``caller`` lists."""
    names = peer_certificate_names(association.dul.socket.socket)
    if names is None:
        return False
    return any(name.casefold() in names for name in caller.certificate_names)


def start_scp(
    settings: Settings,
    jobstore: JobStore,
    spool: Spool,
    clock: Callable[[], float] = time.time,
    on_stored: Callable[[], None] | None = None,
    metrics: NodeMetrics | None = None,
) -> ScpServer:
    """Prepare the spool and start the storage SCP in background threads."""
    spool.prepare()
    scp = StorageSCP(settings, jobstore, spool, clock=clock, on_stored=on_stored, metrics=metrics)
    return scp.start()


def _prefer_requested_transfer_syntaxes(association: Any) -> None:
    """Order this association's accepted transfer syntaxes as the requestor proposed them.

    pynetdicom accepts the first of the acceptor's transfer syntaxes that the
    requestor proposed. Putting the requestor's order first means a sender
    that offers a compressed syntax before an uncompressed one in the same
    presentation context sends the file as it is, without transcoding it.
    """
    requested_order: dict[str, list[str]] = {}
    for context in association.requestor.requested_contexts:
        requested_order.setdefault(str(context.abstract_syntax), list(context.transfer_syntax))
    contexts = association.acceptor.supported_contexts
    for context in contexts:
        requested = requested_order.get(str(context.abstract_syntax))
        if not requested:
            continue
        supported = list(context.transfer_syntax)
        preferred = [syntax for syntax in requested if syntax in supported]
        context.transfer_syntax = preferred + [s for s in supported if s not in preferred]
    association.acceptor.supported_contexts = contexts


def _status(status: StoreStatus, comment: str | None = None) -> Dataset:
    response = Dataset()
    response.Status = int(status)
    if comment:
        response.ErrorComment = comment[:_ERROR_COMMENT_MAX]
    return response
