"""A small storage SCP that files what it receives: ``OUT/<study>/<sop>.dcm``.

The demo runs it as a separate process to stand in for PACS and receive the
node's SR and Secondary Captures::

    python -m hipfuse.node.receiver --port 0 --out received/

It binds to 127.0.0.1 by default (``--host`` changes it) and accepts every
storage SOP class from any caller. Each data set is written as received
(temporary file, rename). One line per event goes to stdout, so a parent
process can follow it: ``listening HOST PORT`` once, then ``stored PATH``
per instance.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from hipfuse.node.spool import InvalidUIDError, validate_uid

# Uncompressed syntaxes: the node sends its results in Explicit VR Little Endian.
_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]
_SUCCESS = 0x0000
_CANNOT_UNDERSTAND = 0xC000
_OUT_OF_RESOURCES = 0xA700


class Receiver:
    """Event handlers that file received instances under ``out_dir``."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self._print_lock = threading.Lock()

    def announce(self, line: str) -> None:
        """Print one line to stdout at once, for the parent process."""
        with self._print_lock:
            print(line, flush=True)

    def handle_store(self, event: Event) -> int:
        """Write one instance; Cannot Understand for invalid UIDs, Out of Resources on I/O."""
        dataset: Dataset = event.dataset
        try:
            study = validate_uid("StudyInstanceUID", dataset.get("StudyInstanceUID"))
            sop = validate_uid("SOPInstanceUID", dataset.get("SOPInstanceUID"))
        except InvalidUIDError as error:
            self.announce(f"rejected {error}")
            return _CANNOT_UNDERSTAND
        folder = self.out_dir / study
        final = folder / f"{sop}.dcm"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{sop}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(event.encoded_dataset(include_meta=True))
            os.replace(temp_name, final)
        except OSError as error:
            self.announce(f"failed {final}: {error.strerror}")
            return _OUT_OF_RESOURCES
        self.announce(f"stored {final}")
        return _SUCCESS

    def start(self, host: str, port: int, ae_title: str) -> ThreadedAssociationServer:
        """Listen on ``host:port`` in background threads (port 0 picks a free one)."""
        ae = AE(ae_title=ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, _TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        server = ae.start_server(
            (host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.handle_store)]
        )
        assert server is not None
        return server


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``python -m hipfuse.node.receiver``."""
    parser = argparse.ArgumentParser(
        prog="python -m hipfuse.node.receiver",
        description="Receive DICOM instances by C-STORE and file them by study.",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write instances to")
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port; 0 picks a free one (default 0)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind to (default 127.0.0.1)"
    )
    parser.add_argument("--ae-title", default="RECEIVER", help="AE title (default RECEIVER)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run until SIGTERM or SIGINT."""
    args = build_parser().parse_args(argv)
    receiver = Receiver(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    server = receiver.start(args.host, args.port, args.ae_title)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    host, port = server.server_address[:2]
    receiver.announce(f"listening {host} {port}")
    while not stop.wait(0.5):
        pass
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
