"""Send bytes to an MLLP listener from a chosen local address; print what comes back.

Run as a separate process by the tests:
    python mllp_raw_sender.py PORT FILE [--source ADDRESS] [--half-close]
The bytes of FILE are sent as they are (framing included or not). With
--half-close the sender shuts down its writing side after sending, as a
peer that dies mid-message does. It then reads until the listener closes the
connection or 10 s pass, writes the bytes received to stdout, and exits 0.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("file", type=Path)
    parser.add_argument("--source", default="127.0.0.1", help="local address to send from")
    parser.add_argument("--half-close", action="store_true")
    options = parser.parse_args()

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as connection:
        connection.bind((options.source, 0))
        connection.settimeout(10.0)
        connection.connect(("127.0.0.1", options.port))
        try:
            connection.sendall(options.file.read_bytes())
            if options.half_close:
                connection.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
                if options.half_close is False and received.endswith(b"\x1c\r"):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    sys.stdout.buffer.write(received)


if __name__ == "__main__":
    main()
