"""A private RabbitMQ broker with the stream plugin, and stream administration.

:class:`LocalRabbitMQ` runs its own broker instance (own node name, data,
logs, config, enabled-plugins file, epmd and loopback ports under a given
directory), so it never touches a system broker, and stops exactly the
processes it started, by pid. The helpers create, fill, read and delete
streams with rstream, as any client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azaion_devtools.processes import ManagedProcess, free_port, port_open, wait_until
from azaion_devtools.wire import WireMessage

_SERVER_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)
_STREAM_READY_TIMEOUT = 90.0


@dataclass(frozen=True)
class StreamEndpoint:
    """Where a stream client connects."""

    host: str
    port: int
    user: str = "guest"
    password: str = "guest"  # noqa: S105 - the default account of a private, loopback-only broker
    vhost: str = "/"

    def consumer_env(self, stream: str) -> dict[str, str]:
        """The consumer's RabbitMQ settings, as the operator would set them."""
        return {
            "RABBITMQ_HOST": self.host,
            "RABBITMQ_PORT": str(self.port),
            "RABBITMQ_VHOST": self.vhost,
            "RABBITMQ_USER": self.user,
            "RABBITMQ_PASSWORD": self.password,
            "RABBITMQ_STREAM": stream,
        }


def _server_binary() -> str | None:
    override = os.environ.get("RABBITMQ_SERVER_BIN")
    if override:
        return override
    for candidate in _SERVER_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    # Other distributions put the real script on PATH; Debian's /usr/sbin one
    # switches to the rabbitmq user and its home, which a private node must avoid.
    found = shutil.which("rabbitmq-server")
    return found if found and not found.startswith("/usr/sbin") else None


def broker_installed() -> bool:
    """Whether a private broker can run here (rabbitmq-server and epmd)."""
    return _server_binary() is not None and shutil.which("epmd") is not None


class LocalRabbitMQ:
    """One private broker node; start, stop and restart keep its data and ports."""

    can_restart = True

    def __init__(self, base_dir: Path, host: str = "127.0.0.1") -> None:
        server = _server_binary()
        epmd = shutil.which("epmd")
        if server is None or epmd is None:
            raise FileNotFoundError("rabbitmq-server (with epmd) is not installed")
        self.server_bin, self.epmd_bin = server, epmd
        self.base_dir = base_dir
        self.amqp_port, self.stream_port = free_port(), free_port()
        self.dist_port, self.epmd_port = free_port(), free_port()
        self.node = f"azaion-test-{uuid.uuid4().hex[:8]}@localhost"
        # A non-loopback host lets pods on the node's bridge reach the broker.
        self.host = host
        self.endpoint = StreamEndpoint(host, self.stream_port)
        self._epmd: ManagedProcess | None = None
        self._server: ManagedProcess | None = None
        self._write_config()

    def _write_config(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        (self.base_dir / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}",
                    f"stream.listeners.tcp.1 = {self.host}:{self.stream_port}",
                    # The node's host name may not resolve; clients must get the listener's address.
                    f"stream.advertised_host = {self.host}",
                    f"stream.advertised_port = {self.stream_port}",
                    # guest may log in only over loopback unless told otherwise (pods are not loopback).
                    *([] if self.host == "127.0.0.1" else ["loopback_users = none"]),
                    "log.console = true",
                    "log.console.level = warning",
                    "log.file = false",
                    "",
                ]
            )
        )
        (self.base_dir / "enabled_plugins").write_text("[rabbitmq_stream].\n")
        # An empty env file keeps /etc/rabbitmq/rabbitmq-env.conf out of the picture.
        (self.base_dir / "rabbitmq-env.conf").write_text("")

    def _env(self) -> dict[str, str]:
        base = self.base_dir
        return {
            "HOME": str(base),  # the Erlang cookie lives here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(base / "plugins-expand"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(base / "feature_flags"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_ALLOW_INPUT": "",
        }

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.alive()

    def start(self) -> None:
        if self._epmd is None or not self._epmd.alive():
            # Our own epmd on our own port: a shared one would outlive the test run.
            self._epmd = ManagedProcess([self.epmd_bin, "-port", str(self.epmd_port)], self.base_dir / "epmd.log")
            wait_until(lambda: port_open(self.epmd_port), 15, "epmd")
        if self.running:
            return
        self._server = ManagedProcess([self.server_bin], self.base_dir / "server.log", env=self._env())
        try:
            wait_until(
                lambda: self._alive_or_raise() and port_open(self.stream_port, self.host),
                _STREAM_READY_TIMEOUT,
                "the RabbitMQ stream port",
                interval=0.25,
            )
        except (TimeoutError, RuntimeError) as error:
            tail = self._server.log_tail()
            self.stop()
            raise RuntimeError(f"RabbitMQ did not start: {error}\n{tail}") from error

    def _alive_or_raise(self) -> bool:
        if self._server is not None and not self._server.alive():
            raise RuntimeError("rabbitmq-server exited")
        return True

    def stop(self, kill: bool = False) -> None:
        """Stop the broker node (graceful, then SIGKILL; at once with ``kill``).

        epmd stays up for a restart.
        """
        if self._server is not None:
            if kill:
                self._server.kill()
            self._server.stop(timeout=30)
            self._server = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._epmd is not None:
            self._epmd.stop()
            self._epmd = None

    def log_tail(self, lines: int = 40) -> str:
        return self._server.log_tail(lines) if self._server else ""


# --------------------------------------------------------------------------
# Stream helpers


def _consumer(endpoint: StreamEndpoint) -> Any:
    from rstream import Consumer

    return Consumer(
        endpoint.host,
        endpoint.port,
        username=endpoint.user,
        password=endpoint.password,
        vhost=endpoint.vhost,
    )


async def create_stream(endpoint: StreamEndpoint, stream: str) -> None:
    async with _consumer(endpoint) as consumer:
        await consumer.create_stream(stream, exists_ok=True)


async def delete_stream(endpoint: StreamEndpoint, stream: str) -> None:
    async with _consumer(endpoint) as consumer:
        await consumer.delete_stream(stream, missing_ok=True)


async def wait_stream_available(endpoint: StreamEndpoint, stream: str, timeout: float = 60.0) -> None:
    """After a broker (re)start a stream answers only once its leader is back."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            async with _consumer(endpoint) as consumer:
                client = await consumer.default_client
                await client.query_leader_and_replicas(stream)
                return
        except Exception:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.3)


async def publish(
    endpoint: StreamEndpoint,
    stream: str,
    messages: Sequence[WireMessage],
    batch_size: int = 200,
) -> None:
    """Publish in order and wait for every confirmation."""
    from rstream import CompressionType, Producer

    await wait_stream_available(endpoint, stream)
    async with Producer(
        endpoint.host,
        endpoint.port,
        username=endpoint.user,
        password=endpoint.password,
        vhost=endpoint.vhost,
    ) as producer:
        pending: list[Any] = []

        async def flush() -> None:
            if pending:
                await producer.send_batch(stream, list(pending))
                pending.clear()

        for message in messages:
            if message.sub_entry_gzip:
                # The stream protocol's own compression: a gzip sub-entry batch.
                await flush()
                done = asyncio.get_running_loop().create_future()

                def confirmed(_status: Any, done: asyncio.Future[None] = done) -> None:
                    if not done.done():
                        done.set_result(None)

                await producer.send_sub_entry(
                    stream, [message.to_amqp()], CompressionType.Gzip, on_publish_confirm=confirmed
                )
                await asyncio.wait_for(done, 30)
                continue
            pending.append(message.to_amqp())
            if len(pending) >= batch_size:
                await flush()
        await flush()


def publish_sync(endpoint: StreamEndpoint, stream: str, messages: Sequence[WireMessage]) -> None:
    asyncio.run(publish(endpoint, stream, messages))


async def consume_raw(
    endpoint: StreamEndpoint, stream: str, count: int, timeout: float = 30.0
) -> list[tuple[int, Any]]:
    """Read ``count`` messages from the start: (offset, decoded AMQP message or raw bytes)."""
    from rstream import ConsumerOffsetSpecification, OffsetType, amqp_decoder

    await wait_stream_available(endpoint, stream)
    received: list[tuple[int, Any]] = []
    done = asyncio.Event()

    async def on_message(raw: bytes, context: Any) -> None:
        try:
            message: Any = amqp_decoder(raw)
        except Exception:
            message = raw  # not an AMQP message: returned as the bytes stored
        received.append((context.offset, message))
        if len(received) >= count:
            done.set()

    async with _consumer(endpoint) as consumer:
        await consumer.subscribe(
            stream,
            on_message,
            offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST, None),
        )
        await asyncio.wait_for(done.wait(), timeout)
    return received


async def query_server_offset(endpoint: StreamEndpoint, stream: str, reference: str) -> int | None:
    from rstream import OffsetNotFound

    async with _consumer(endpoint) as consumer:
        try:
            return int(await consumer.query_offset(stream, reference))
        except OffsetNotFound:
            return None


@contextlib.contextmanager
def private_broker(prefix: str, host: str = "127.0.0.1") -> Iterator[LocalRabbitMQ]:
    """A started private broker under a fresh temporary directory, stopped and removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        broker = LocalRabbitMQ(base, host=host)
        try:
            broker.start()
            yield broker
        finally:
            broker.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
