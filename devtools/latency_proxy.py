"""A TCP proxy on 127.0.0.1 that delays every byte by a settable latency, for the chaos suite's
slow Redis (toxiproxy is not in Debian).

    python -m devtools.latency_proxy --upstream-port 6379    # prints "listening <port>"

Each line on stdin sets the one-way delay in milliseconds ("50", "0"); the proxy answers
"delay <ms>" once it applies to every byte received from then on. Bytes keep their order in
each direction: a chunk leaves no earlier than its arrival plus the delay in force when it
arrived. When either side closes, the other is closed after what was queued for it is sent.
LatencyProxy runs it as a child process: in the chaos process, the load generator's threads
would hold the GIL and add their own delays to Redis' traffic.
"""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from typing import IO

HOST = "127.0.0.1"
CHUNK = 65536


class DelayState:
    def __init__(self) -> None:
        self.delay_s = 0.0


async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  state: DelayState) -> None:
    """Copy reader to writer, each chunk held until arrival + delay; closes writer at EOF."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    async def receive() -> None:
        try:
            while chunk := await reader.read(CHUNK):
                queue.put_nowait((loop.time() + state.delay_s, chunk))
        except OSError:
            pass
        queue.put_nowait(None)

    receiver = asyncio.create_task(receive())
    try:
        while (item := await queue.get()) is not None:
            due, chunk = item
            if due > loop.time():  # no delay set: no extra turn of the loop
                await asyncio.sleep(due - loop.time())
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        receiver.cancel()
        writer.close()


async def serve_connection(client_reader: asyncio.StreamReader,
                           client_writer: asyncio.StreamWriter, upstream_port: int,
                           state: DelayState) -> None:
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(HOST, upstream_port)
    except OSError:
        client_writer.close()  # the upstream is down: the client sees its connection closed
        return
    try:
        await asyncio.gather(forward(client_reader, upstream_writer, state),
                             forward(upstream_reader, client_writer, state))
    except asyncio.CancelledError:  # the proxy is shutting down
        client_writer.close()
        upstream_writer.close()


async def read_commands(state: DelayState) -> None:
    """Delay settings from stdin until it closes (the owner went away: stop)."""
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        state.delay_s = float(line.decode().strip() or 0) / 1000
        print(f"delay {state.delay_s * 1000:g}", flush=True)


async def main_async(listen_port: int, upstream_port: int) -> None:
    state = DelayState()
    server = await asyncio.start_server(
        lambda r, w: serve_connection(r, w, upstream_port, state), HOST, listen_port)
    port = server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    async with server:
        await read_commands(state)


class LatencyProxy:
    """The proxy as a child process: `port` to connect to, `set_delay_ms` to slow it down."""

    def __init__(self, upstream_port: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devtools.latency_proxy", "--upstream-port",
             str(upstream_port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = int(self._reply().split()[1])
        self.delay_ms = 0.0

    def _reply(self) -> str:
        stdout: IO[str] | None = self.process.stdout
        line = stdout.readline() if stdout is not None else ""
        if not line:
            raise RuntimeError(f"latency proxy exited ({self.process.poll()})")
        return line.strip()

    def set_delay_ms(self, delay_ms: float) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{delay_ms}\n")
        self.process.stdin.flush()
        self._reply()
        self.delay_ms = delay_ms

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # read_commands ends, the server closes
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--listen-port", type=int, default=0, help="0: a free port")
    args = parser.parse_args()
    asyncio.run(main_async(args.listen_port, args.upstream_port))


if __name__ == "__main__":
    main()
