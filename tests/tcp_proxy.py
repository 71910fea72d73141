"""A TCP proxy on 127.0.0.1 that a test can pause (stall without closing) or cut.

Why: the faults a party's relay stream meets in a bank's network are a link that goes
silent (a firewall dropping packets, a hung middlebox) and one that is reset.  Both are
reproduced here between one party and the relay, with the real TLS stream running
through it, so the test sees what keepalive and the resume logic see in production.

* ``pause()``: stop forwarding in both directions on every connection, open or new;
  nothing is closed, bytes wait in the proxy and the kernel buffers (TCP pushes back).
* ``resume()``: forward again; what waited is delivered.
* ``cut()``: reset every open connection (SO_LINGER 0: buffered bytes are lost).
* ``refuse``: while True, new connections are accepted and reset at once.
"""

from __future__ import annotations

import socket
import struct
import threading


class _Link:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.dead = threading.Event()

    def reset(self) -> None:
        self.dead.set()
        for s in (self.client, self.upstream):
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target`` ("host:port") until ``close()``."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self.accepted = 0  # connections accepted so far (a reconnect shows up here)
        self.forwarded = 0  # bytes forwarded, both directions
        self.refuse = False
        threading.Thread(target=self._accept_loop, name="tcp-proxy-accept", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.reset()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        try:
            self._listener.close()
        except OSError:
            pass
        self.cut()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            with self._lock:
                self.accepted += 1
            if self.refuse:
                _Link(client, socket.socket()).reset()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _Link(client, socket.socket()).reset()
                continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(link, src, dst), name="tcp-proxy-pump", daemon=True).start()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not link.dead.is_set():
                data = src.recv(65536)
                if not data:
                    break
                while not self._flowing.wait(0.05):  # paused: hold the bytes, keep the connection open
                    if link.dead.is_set():
                        return
                if link.dead.is_set():
                    return
                dst.sendall(data)
                with self._lock:
                    self.forwarded += len(data)
        except OSError:
            pass
        finally:
            if not link.dead.is_set():  # one side closed normally: close the other side too
                link.dead.set()
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
