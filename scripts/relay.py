"""A TCP relay on loopback between a client and a server, for benchmarks and tests: it can pace the server's bytes
to a link's bandwidth (`mbit`) and hold each connection's first answer for `delay` seconds (a slow upstream)."""

from __future__ import annotations

import asyncio
import socket
import threading

from serverctl import free_port


class Relay:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port` in a thread of its own; `mbit` (Mbit/s, None: unpaced)
    paces what the server sends, `delay` (seconds, may be changed at any time) holds the first bytes of each
    connection's answer. The client's bytes pass unpaced."""

    def __init__(self, target_port: int, mbit: float | None = None, delay: float = 0.0) -> None:
        self.target_port = target_port
        self.rate = mbit * 1e6 / 8 if mbit else None  # bytes per second
        self.delay = delay
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        if not ready.wait(10):
            raise RuntimeError("the relay did not start")

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_forever()

    async def _pipe(self, reader, writer, answer: bool) -> None:
        due, first = self.loop.time(), answer
        try:
            while data := await reader.read(256 << 10):
                if first and self.delay > 0:
                    await asyncio.sleep(self.delay)
                first = False
                writer.write(data)
                await writer.drain()
                if answer and self.rate:
                    due = max(due, self.loop.time()) + len(data) / self.rate
                    if due > self.loop.time():
                        await asyncio.sleep(due - self.loop.time())
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _serve(self, client_reader, client_writer) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        for sock in (client_writer.get_extra_info("socket"), server_writer.get_extra_info("socket")):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(self._pipe(client_reader, server_writer, False),
                             self._pipe(server_reader, client_writer, True))

    def close(self) -> None:
        """Stop listening, end the connections still open, stop the relay's thread."""

        async def shutdown() -> None:
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
