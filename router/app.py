"""The router process: wires settings, registry, backends, dataplane and fronts; runs until told.

Lifecycle: health NOT_SERVING while starting -> SERVING -> on SIGTERM/SIGINT, NOT_SERVING and
new calls refused while in-flight calls finish (at most server.grace_period_s) -> stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server
from tensorgate.v1 import inference_pb2, registry_pb2
from tritonclient.grpc import service_pb2

from adapters.base import BackendOptions, default_pool
from router import config, metrics
from router.admin import RegistryAdmin
from router.config import Settings
from router.dataplane import Dataplane
from router.grpc.calls import CallTracker, add_service
from router.grpc.inference import InferenceServicer
from router.grpc.tensorgate_api import PredictServicer, RegistryServicer
from router.http import edge
from router.http.server import HttpServer
from router.registry import Registry, RegistryStore

log = logging.getLogger(__name__)

OIP_SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
PREDICT_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
REGISTRY_SERVICE = registry_pb2.DESCRIPTOR.services_by_name["ModelRegistry"]
SERVICES = tuple(s.full_name for s in (OIP_SERVICE, PREDICT_SERVICE, REGISTRY_SERVICE))


class App:
    """One router: call start(), then drain() and stop(); ports are known after start()."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tracker = CallTracker(settings.server.max_concurrent_rpcs)
        self.grpc_port = 0
        self.http_port = 0
        self.metrics_port = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._metrics_server: Any = None
        self._stopped = False

    async def start(self) -> None:
        """Loads the registry, opens backend channels lazily, and starts serving."""
        s = self.settings
        self.store = RegistryStore(s.registry.path)
        limits = config.transform_limits(s)
        self.registry = Registry(self.store, limits)
        self.backends = default_pool(
            BackendOptions(
                keepalive_s=s.backend.keepalive_s,
                max_message_bytes=s.backend.max_message_bytes,
                control_timeout_s=s.backend.control_timeout_s,
            )
        )
        self.dataplane = Dataplane(s, self.registry, self.backends)
        self.admin = RegistryAdmin(
            self.store, self.backends, on_change=self.registry.load, limits=limits
        )

        self.health = health.aio.HealthServicer()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", s.server.max_message_bytes),
                ("grpc.max_receive_message_length", s.server.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        services = (
            (OIP_SERVICE, InferenceServicer(self.dataplane, self.tracker)),
            (PREDICT_SERVICE, PredictServicer(self.dataplane, self.tracker)),
            (REGISTRY_SERVICE, RegistryServicer(self.admin, self.tracker)),
        )
        for service, servicer in services:
            add_service(self.server, service, servicer)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        address = f"{s.server.host}:{s.server.grpc_port}"
        try:
            self.grpc_port = self.server.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"cannot listen for gRPC on {address}: {e}") from None
        await self.server.start()
        self.http = HttpServer(
            edge.build(s.http, self.dataplane, services[1:]), s.http, self.tracker
        )
        self.http_port = await self.http.start(s.server.host, s.server.http_port)
        try:
            self._metrics_server, _ = start_http_server(s.server.metrics_port, s.server.host)
        except OSError as e:
            raise OSError(
                f"cannot serve metrics on {s.server.host}:{s.server.metrics_port}: {e.strerror}"
            ) from None
        self.metrics_port = self._metrics_server.server_port

        await asyncio.to_thread(self.registry.load)
        self._tasks.append(asyncio.create_task(self.registry.watch(s.registry.poll_interval_s)))
        metrics.INFLIGHT.set_function(lambda: self.tracker.inflight)
        self.dataplane.ready = True
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving gRPC on %s:%d, HTTP on http://%s:%d, metrics on http://%s:%d/metrics; "
            "%d model versions registered (registry %s)",
            s.server.host, self.grpc_port, s.server.host, self.http_port, s.server.host,
            self.metrics_port,
            len(self.registry.all()), s.registry.path,
        )

    async def _set_health(self, status: int) -> None:
        for name in ("", *SERVICES):
            await self.health.set(name, status)

    async def drain(self) -> None:
        """Health NOT_SERVING, new calls refused, in-flight calls given the grace period."""
        grace = self.settings.server.grace_period_s
        log.info("draining: %d calls in flight, grace period %.1fs", self.tracker.inflight, grace)
        self.dataplane.ready = False
        self.tracker.draining = True
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if hasattr(self, "http"):
            self.http.close_idle()
        if not await self.tracker.wait_idle(grace):
            log.warning("grace period over with %d calls in flight; cancelling them",
                        self.tracker.inflight)

    async def stop(self) -> None:
        """Stops the server (cancelling what is left), closes backends and the registry."""
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # start() may have failed part-way: close what it opened.
        if hasattr(self, "http"):
            await self.http.stop()
        if hasattr(self, "server"):
            await self.server.stop(grace=0.5)
        if hasattr(self, "dataplane"):
            await self.dataplane.close()
        if hasattr(self, "backends"):
            await self.backends.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if hasattr(self, "store"):
            self.store.close()
        log.info("stopped")

    async def run_until_signal(self) -> None:
        """Serves until SIGTERM or SIGINT, then drains and stops."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            await stop.wait()
            await self.drain()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            await self.stop()


def serve(settings: Settings) -> None:
    """Runs the router on uvloop until SIGTERM/SIGINT."""
    import uvloop

    uvloop.run(App(settings).run_until_signal())
