"""MLLP listener for HL7 v2 messages (asyncio), with a thread wrapper for the node.

MLLP frames each message as ``<VT> message <FS><CR>`` (0x0B, 0x1C, 0x0D; HL7
v2 Appendix C, MLLP release 1). One connection may carry any number of
messages: each is processed and acknowledged before the next one on the same
connection, so ACKs leave in the order the messages came. Connections from
addresses outside ``[hl7] allowed_addresses`` are closed before anything is
read.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import structlog

from hipfuse.config.clinical_text import HL7Settings
from hipfuse.integrations.hl7.intake import HL7Intake, IntakeResult

log = structlog.get_logger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
_READ_CHUNK_BYTES = 65536
# Bytes between frames that are no data: the CR after the end block, line
# breaks and spaces some senders add.
_BETWEEN_FRAMES = b"\r\n\t "


class FrameProblem(StrEnum):
    """Reason a frame's payload is not a whole message."""

    TOO_LARGE = "too_large"
    MISSING_END_BLOCK = "missing_end_block"
    CONNECTION_CLOSED = "connection_closed"


FRAME_PROBLEM_REASONS: dict[FrameProblem, str] = {
    FrameProblem.MISSING_END_BLOCK: (
        "a start block (0x0B) arrived before the end block (0x1C) of the message before it; "
        "end every message with 0x1C 0x0D"
    ),
    FrameProblem.CONNECTION_CLOSED: (
        "the connection closed before the end block (0x1C) of the message arrived"
    ),
}
OUTSIDE_FRAMES_REASON = (
    "bytes arrived outside MLLP framing; wrap each message as 0x0B message 0x1C 0x0D"
)


@dataclass(frozen=True)
class Frame:
    """A message payload with MLLP framing removed; ``problem`` when it is incomplete."""

    payload: bytes
    problem: FrameProblem | None = None


def frame_message(message: bytes) -> bytes:
    """Wrap message bytes in MLLP framing."""
    return START_BLOCK + message + END_BLOCK + CARRIAGE_RETURN


class FrameDecoder:
    """Split a byte stream into MLLP frames, keeping at most ``max_bytes`` of each payload.

    A payload longer than ``max_bytes`` is read to its end block and returned
    with its first ``max_bytes`` bytes and :attr:`FrameProblem.TOO_LARGE`.
    Bytes outside any frame (a sender that does not frame its messages) are
    counted in ``discarded_bytes`` and their first ``max_bytes`` kept for
    :meth:`take_outside`.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.discarded_bytes = 0
        self._outside = bytearray()
        self._buffer = bytearray()
        self._in_frame = False
        self._too_large = False

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return the frames they complete."""
        frames: list[Frame] = []
        position = 0
        while position < len(data):
            if not self._in_frame:
                start = data.find(START_BLOCK, position)
                stop = len(data) if start < 0 else start
                outside = data[position:stop]
                if outside.strip(_BETWEEN_FRAMES):
                    self.discarded_bytes += len(outside)
                    room = max(self.max_bytes - len(self._outside), 0)
                    self._outside += outside[:room]
                if start < 0:
                    break
                self._in_frame = True
                position = start + 1
                continue
            end = data.find(END_BLOCK, position)
            stop = len(data) if end < 0 else end
            restart = data.find(START_BLOCK, position, stop)
            if restart >= 0:
                # The sender began a new message without ending this one.
                self._append(data[position:restart])
                frames.append(self._take(FrameProblem.MISSING_END_BLOCK))
                self._in_frame = True
                position = restart + 1
                continue
            self._append(data[position:stop])
            if end < 0:
                break
            frames.append(self._take(FrameProblem.TOO_LARGE if self._too_large else None))
            self._in_frame = False
            position = end + 1
        return frames

    def close(self) -> Frame | None:
        """Return what is left of an unfinished frame when the stream ends, or ``None``."""
        if not self._in_frame:
            return None
        self._in_frame = False
        frame = self._take(FrameProblem.CONNECTION_CLOSED)
        return frame if frame.payload.strip(_BETWEEN_FRAMES) else None

    def take_outside(self) -> bytes:
        """Return and forget the bytes kept from outside any frame."""
        outside = bytes(self._outside)
        self._outside = bytearray()
        return outside

    def _append(self, chunk: bytes) -> None:
        room = self.max_bytes - len(self._buffer)
        if len(chunk) > room:
            self._too_large = True
            chunk = chunk[: max(room, 0)]
        self._buffer += chunk

    def _take(self, problem: FrameProblem | None) -> Frame:
        frame = Frame(bytes(self._buffer), problem)
        self._buffer = bytearray()
        self._too_large = False
        return frame


class MLLPServer:
    """Asyncio MLLP listener that hands each message to an :class:`HL7Intake`.

    Parameters
    ----------
    settings
        ``[hl7]``: bind address, port, allowed addresses, limits.
    intake
        Stores and acknowledges the messages.
    port
        Overrides ``settings.port``; 0 picks a free port (tests).
    """

    def __init__(self, settings: HL7Settings, intake: HL7Intake, port: int | None = None) -> None:
        self.settings = settings
        self.intake = intake
        self._requested_port = settings.port if port is None else port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The TCP port listened on (after :meth:`start`)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the MLLP listener is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start accepting connections.

        Raises
        ------
        OSError
            The address cannot be bound (in use, not an address of this host).
        """
        self._server = await asyncio.start_server(
            self._on_connection, host=self.settings.bind_address, port=self._requested_port
        )
        log.info(
            "hl7_listener_started",
            bind_address=self.settings.bind_address,
            port=self.port,
        )

    async def close(self) -> None:
        """Stop listening and close open connections."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()
        self._server = None
        log.info("hl7_listener_stopped")

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        peer = writer.get_extra_info("peername") or ("", 0)
        address, port = str(peer[0]), int(peer[1])
        if not self.settings.allows(address):
            log.warning("hl7_connection_rejected", peer_address=address, reason="not allowed")
            await _close_writer(writer)
            return
        if len(self._connections) >= self.settings.max_connections:
            log.warning(
                "hl7_connection_rejected",
                peer_address=address,
                reason="too many connections",
                max_connections=self.settings.max_connections,
            )
            await _close_writer(writer)
            return
        assert task is not None
        self._connections.add(task)
        log.info("hl7_connection_opened", peer_address=address, peer_port=port)
        messages = 0
        try:
            messages = await self._serve(reader, writer, f"mllp:{address}")
        except (ConnectionError, OSError) as exc:
            log.warning("hl7_connection_failed", peer_address=address, error=str(exc))
        finally:
            self._connections.discard(task)
            await _close_writer(writer)
            log.info("hl7_connection_closed", peer_address=address, messages=messages)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str
    ) -> int:
        decoder = FrameDecoder(self.settings.max_message_bytes)
        messages = 0
        while True:
            try:
                data = await asyncio.wait_for(
                    reader.read(_READ_CHUNK_BYTES), self.settings.idle_timeout_s
                )
            except TimeoutError:
                log.info("hl7_connection_idle_timeout", source=source)
                break
            if not data:
                break
            for frame in decoder.feed(data):
                result = await self._process(frame, source)
                writer.write(frame_message(result.ack))
                await writer.drain()
                messages += 1
        leftover = decoder.close()
        if leftover is not None:
            # The sender has gone, so no ACK is sent. The bytes that arrived are kept as rejected.
            await self._process(leftover, source)
        if decoder.discarded_bytes:
            log.warning(
                "hl7_bytes_outside_frames", source=source, discarded_bytes=decoder.discarded_bytes
            )
            await asyncio.to_thread(
                self.intake.process_incomplete,
                decoder.take_outside(),
                source,
                OUTSIDE_FRAMES_REASON,
                truncated=decoder.discarded_bytes > self.settings.max_message_bytes,
            )
        return messages

    async def _process(self, frame: Frame, source: str) -> IntakeResult:
        if frame.problem is FrameProblem.TOO_LARGE:
            reason = (
                f"message is larger than the {self.settings.max_message_bytes} bytes accepted "
                "here; raise [hl7] max_message_bytes or split the message"
            )
            return await asyncio.to_thread(
                self.intake.process_incomplete, frame.payload, source, reason, truncated=True
            )
        if frame.problem is not None:
            return await asyncio.to_thread(
                self.intake.process_incomplete,
                frame.payload,
                source,
                FRAME_PROBLEM_REASONS[frame.problem],
            )
        return await asyncio.to_thread(self.intake.process, frame.payload, source)


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


class MLLPListenerThread:
    """Runs an :class:`MLLPServer` on its own event loop in a background thread.

    The node's workers are threads; this wrapper lets them start and stop the
    listener without an event loop of their own.

    Parameters
    ----------
    settings, intake, port
        As for :class:`MLLPServer`.
    """

    def __init__(self, settings: HL7Settings, intake: HL7Intake, port: int | None = None) -> None:
        self.server = MLLPServer(settings, intake, port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def port(self) -> int:
        """The TCP port listened on."""
        return self.server.port

    @property
    def is_running(self) -> bool:
        """Whether the listener thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the thread and return once the listener is bound.

        Raises
        ------
        OSError
            Binding failed.
        TimeoutError
            The listener did not start within ``timeout_s``.
        """
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name="hl7-mllp", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout_s):
            raise TimeoutError(f"the MLLP listener did not start within {timeout_s} s")
        if failure:
            raise failure[0]

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the listener and wait for its thread to end."""
        if self._loop is None or self._stopped is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout_s)

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        asyncio.run(self._main(ready.set, failure))

    async def _main(self, ready: Callable[[], None], failure: list[BaseException]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        try:
            await self.server.start()
        except OSError as exc:
            failure.append(exc)
            ready()
            return
        ready()
        await self._stopped.wait()
        await self.server.close()
