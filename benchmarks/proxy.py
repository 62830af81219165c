"""Bare grpc.aio pass-through proxy for the Open Inference Protocol: the floor for any Python hop.

Forwards every unary-unary ``/inference.GRPCInferenceService/*`` call as raw bytes (identity
(de)serializers, no parsing) over one long-lived channel to the upstream server.

    python -m benchmarks.proxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT

Prints ``ready <host:port>`` on stdout once listening (port 0 picks a free port) and serves until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

import grpc
import grpc.aio

SERVICE_PREFIX = "/inference.GRPCInferenceService/"
# The only streaming method of the service; everything else is unary-unary.
STREAMING_METHODS = frozenset({SERVICE_PREFIX + "ModelStreamInfer"})
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
# Metadata keys the gRPC runtime owns; forwarding them would be rejected or wrong.
_RESERVED_METADATA = frozenset({"user-agent", "te", "content-type", "host", "authority"})

Behavior = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def _forwardable(
    metadata: Sequence[tuple[str, str | bytes]] | None,
) -> tuple[tuple[str, str | bytes], ...]:
    """Client metadata minus the keys the gRPC runtime sets itself."""
    if not metadata:
        return ()
    return tuple(
        (key, value)
        for key, value in metadata
        if not key.startswith((":", "grpc-")) and key not in _RESERVED_METADATA
    )


class PassThroughHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Generic handler that relays unary-unary inference calls byte for byte to one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        """Relay over ``channel``; method handlers are built once per method and cached."""
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def _make_behavior(self, method: str) -> Behavior:
        """Build the coroutine that forwards one method."""
        call = self._channel.unary_unary(method)  # no serializers: bytes in, bytes out

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            """Send the request bytes upstream and return the response bytes unchanged."""
            try:
                response: bytes = await call(
                    request,
                    timeout=context.time_remaining(),
                    metadata=_forwardable(context.invocation_metadata()),
                )
                return response
            except grpc.aio.AioRpcError as err:
                await context.abort(err.code(), err.details() or "", err.trailing_metadata() or ())
                raise  # unreachable: abort raises

        return forward

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        """Return the forwarding handler for inference methods, None (UNIMPLEMENTED) otherwise."""
        method: str = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            if not method.startswith(SERVICE_PREFIX) or method in STREAMING_METHODS:
                return None
            handler = grpc.unary_unary_rpc_method_handler(self._make_behavior(method))
            self._handlers[method] = handler
        return handler


async def serve(listen: str, upstream: str) -> None:
    """Run the proxy until SIGTERM or SIGINT."""
    channel = grpc.aio.insecure_channel(upstream, options=CHANNEL_OPTIONS)
    server = grpc.aio.server(options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((PassThroughHandler(channel),))
    host = listen.rsplit(":", 1)[0]
    port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"proxy: cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(grace=1.0)
        await channel.close()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxy", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, help="host:port to serve on (port 0: any free port)")
    parser.add_argument("--upstream", required=True, help="host:port of the upstream gRPC server")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a project dependency
        asyncio.run(serve(args.listen, args.upstream))
    else:
        uvloop.run(serve(args.listen, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
