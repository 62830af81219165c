"""Assembles the HTTP edge's route table: the REST binding, then the transcoded services."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.descriptor import ServiceDescriptor

from router.config import HttpSettings
from router.dataplane import Dataplane
from router.grpc.calls import Servicer
from router.http import oip, openapi, transcode
from router.http.routes import Router


def build(
    settings: HttpSettings,
    dataplane: Dataplane,
    services: Sequence[tuple[ServiceDescriptor, Servicer]],
) -> Router:
    """The route table of the edge: the Open Inference Protocol's REST routes first, then every
    `google.api.http` binding of the services' methods, then `GET /openapi.json`."""
    router = Router()
    for route in oip.routes(dataplane, settings):
        router.add(route)
    for route in transcode.routes(services, settings):
        router.add(route)
    router.add(openapi.route([service for service, _ in services]))
    return router
