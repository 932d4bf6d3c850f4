"""A real MLLP listener for tests: a thread serving a loopback port that records every HL7 message
it receives and answers an ACK (MSA-1 ``AA``, or ``AE`` while ``refuse`` is set)."""

from __future__ import annotations

import socket
import threading
from types import TracebackType

SB, EB = b"\x0b", b"\x1c\x0d"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MllpListener:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.messages: list[str] = []
        self.refuse = False
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._received = threading.Condition()

    def start(self) -> MllpListener:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(8)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> MllpListener:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def wait_for(self, n: int, timeout_s: float = 30.0) -> list[str]:
        with self._received:
            self._received.wait_for(lambda: len(self.messages) >= n, timeout_s)
        return list(self.messages)

    def _serve(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while EB in buf:
                    frame, buf = buf.split(EB, 1)
                    message = frame.lstrip(SB).decode("utf-8")
                    control_id = message.split("\r")[0].split("|")[9]
                    code = "AE" if self.refuse else "AA"
                    msh = f"MSH|^~\\&|LIS|LAB|||20261201000000||ACK^R01^ACK|A{control_id}|P|2.5.1"
                    ack = f"{msh}\rMSA|{code}|{control_id}"
                    if code == "AA":
                        with self._received:
                            self.messages.append(message)
                            self._received.notify_all()
                    conn.sendall(SB + ack.encode() + EB)
