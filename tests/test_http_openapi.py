"""The OpenAPI document of the HTTP edge (router.http.openapi): complete, consistent, proto3 JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
from tensorgate.v1 import inference_pb2, registry_pb2

from router.admin import RegistryAdmin
from router.config import HttpSettings
from router.dataplane import Dataplane
from router.grpc.calls import CallTracker
from router.grpc.tensorgate_api import PredictServicer, RegistryServicer
from router.http import edge, openapi
from router.http.routes import Request
from tests.conftest import RouterThread
from tests.test_http_transcode import echo_service, fetch

PREDICT = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
REGISTRY = registry_pb2.DESCRIPTOR.services_by_name["ModelRegistry"]
DOC = openapi.document([PREDICT, REGISTRY])
SCHEMAS = DOC["components"]["schemas"]


def edge_routes() -> list[tuple[str, str]]:
    """(method, template) of every route edge.build makes (no backend: nothing is called)."""
    tracker = CallTracker()
    services = [
        (PREDICT, PredictServicer(cast(Dataplane, None), tracker)),
        (REGISTRY, RegistryServicer(cast(RegistryAdmin, None), tracker)),
    ]
    router = edge.build(HttpSettings(), cast(Dataplane, None), services)
    return [(r.method, r.template) for r in router.routes]


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for verb, op in item.items():
            yield verb.upper(), path, op


def op_of(verb: str, path: str, doc: dict[str, Any] = DOC) -> dict[str, Any]:
    return cast(dict[str, Any], doc["paths"][path][verb.lower()])


def resolve(node: dict[str, Any], doc: dict[str, Any] = DOC) -> dict[str, Any]:
    """A schema, parameter or response with its $ref followed."""
    while "$ref" in node:
        section, name = node["$ref"].removeprefix("#/components/").split("/", 1)
        node = doc["components"][section][name]
    return node


def properties(name: str) -> dict[str, Any]:
    return cast(dict[str, Any], SCHEMAS[name]["properties"])


def test_every_edge_route_is_documented_and_nothing_else() -> None:
    routes = edge_routes()
    assert ("GET", "/openapi.json") in routes and ("POST", "/v1/models/{model}:predict") in routes
    documented = {(verb, path) for verb, path, _ in operations(DOC)}
    assert {(m, openapi.path_of(t)) for m, t in routes} == documented
    assert len(documented) == len(routes) == 26
    ids = [op["operationId"] for _, _, op in operations(DOC)]
    assert len(ids) == len(set(ids))


def test_path_of_drops_variable_patterns() -> None:
    assert (
        openapi.path_of("/v1/{name=models/*}/versions/{version}:get") == "/v1/{name}/versions/{version}:get"
    )
    assert openapi.path_of("/v1/models/{model}:predict") == "/v1/models/{model}:predict"


def test_every_ref_resolves() -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(DOC)
    assert len(refs) > 50
    for ref in refs:
        section, name = ref.removeprefix("#/components/").split("/", 1)
        assert name in DOC["components"][section], ref


def test_message_schemas_follow_the_proto3_json_mapping() -> None:
    tensor = properties("tensorgate.v1.Tensor")
    assert tensor["shape"] == {
        "type": "array",
        "items": {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    }
    assert tensor["data"] == {"type": "string", "format": "byte", "contentEncoding": "base64"}
    assert properties("tensorgate.v1.Record")["values"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
    }
    assert properties("tensorgate.v1.PredictRequest")["items"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/tensorgate.v1.Item"},
    }
    assert set(properties("tensorgate.v1.PredictResponse")) == {"model", "version", "results", "requestId"}
    classification = properties("tensorgate.v1.Classification")
    assert classification["index"]["type"] == "string" and classification["row"] == {
        "type": "integer",
        "format": "int32",
    }
    assert classification["score"] == {"type": "number", "format": "float"}
    model = properties("tensorgate.v1.ModelVersion")
    assert model["maxBatchSize"] == {"type": "integer", "format": "int32"}
    assert resolve(model["createdAt"])["format"] == "date-time"
    assert resolve(model["transforms"]["items"])["type"] == "object"
    assert properties("tensorgate.v1.Batching")["maxQueueDelayUs"]["type"] == "string"
    assert SCHEMAS["tensorgate.v1.ModelVersion"]["additionalProperties"] is False
    # a oneof: at most one of its members
    item = SCHEMAS["tensorgate.v1.Item"]
    members = ["tensors", "image", "text", "table"]
    assert item["oneOf"][:4] == [{"required": [m]} for m in members]
    assert item["oneOf"][4] == {"not": {"anyOf": [{"required": [m]} for m in members]}}
    assert "oneof payload" in item["properties"]["image"]["description"]


def test_transcoded_operations_have_their_parameters_and_bodies() -> None:
    predict = op_of("POST", "/v1/models/{model}/versions/{version}:predict")
    assert [(p.get("name"), p.get("in")) for p in predict["parameters"][:2]] == [
        ("model", "path"),
        ("version", "path"),
    ]
    assert all(resolve(p)["in"] != "query" for p in predict["parameters"])  # body "*": no query parameters
    assert predict["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/tensorgate.v1.PredictRequest"
    }
    assert predict["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/tensorgate.v1.PredictResponse"
    }
    error = resolve(predict["responses"]["default"])
    assert error["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    listed = op_of("GET", "/v1/registry/models")
    assert listed["parameters"][0] == {"name": "name", "in": "query", "schema": {"type": "string"}}
    assert "requestBody" not in listed
    register = op_of("POST", "/v1/registry/models")
    assert register["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/tensorgate.v1.ModelVersion"
    }
    assert [resolve(p)["name"] for p in register["parameters"]] == ["grpc-timeout", "x-request-id"]
    remove = op_of("DELETE", "/v1/registry/models/{name}")
    assert remove["operationId"] == "ModelRegistry_RemoveModel_1"
    assert [p.get("name") for p in remove["parameters"] if p.get("in") == "path"] == ["name"]
    assert [p.get("name") for p in remove["parameters"] if p.get("in") == "query"] == ["version"]


def test_open_inference_protocol_routes_are_described() -> None:
    assert SCHEMAS["Error"]["required"] == ["error", "request_id"]
    infer = op_of("POST", "/v2/models/{name}/versions/{version}/infer")
    header = [p for p in infer["parameters"] if p.get("in") == "header"]
    assert header[0]["name"] == "Inference-Header-Content-Length"
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    ok = infer["responses"]["200"]
    assert "Inference-Header-Content-Length" in ok["headers"]
    assert ok["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/oip.InferenceResponse"
    }
    inputs = SCHEMAS["oip.RequestInput"]["properties"]
    assert "binary_data_size" in inputs["parameters"]["properties"]
    assert set(op_of("GET", "/v2/health/ready")["responses"]) == {"200", "400", "default"}
    assert set(op_of("GET", "/v2/models/{name}/config")["responses"]) == {"501"}


def test_a_new_annotated_rpc_is_documented_without_new_code() -> None:
    doc = openapi.document([echo_service()])
    schemas = doc["components"]["schemas"]
    get = op_of("GET", "/t/shelves/{shelf}/items/{item_id}", doc)
    params = {p["name"]: p for p in get["parameters"] if "name" in p}
    assert params["item_id"]["in"] == "path" and params["item_id"]["schema"]["format"] == "int64"
    assert params["color"]["schema"] == {"$ref": "#/components/schemas/tgtest.Color"}
    assert (
        params["tags"]["schema"] == {"type": "array", "items": {"type": "string"}}
        and params["tags"]["explode"]
    )
    assert params["inner.flag"]["schema"] == {"type": "boolean"}
    assert params["inner.counts"]["schema"]["items"]["type"] == "string"
    query = {name for name, p in params.items() if p["in"] == "query"}
    assert query == {"color", "tags", "inner.label", "inner.counts", "inner.flag", "ratio", "a", "b"}
    assert schemas["tgtest.Color"] == {"type": "string", "title": "Color", "enum": ["COLOR_UNSET", "RED"]}
    assert schemas["tgtest.EchoRequest"]["properties"]["blobs"] == {
        "type": "object",
        "additionalProperties": {"type": "string", "format": "byte", "contentEncoding": "base64"},
    }
    echo = op_of("POST", "/t/shelves/{shelf}:echo", doc)  # body "inner", response_body "echoed"
    assert echo["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/tgtest.Inner"
    }
    assert echo["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/tgtest.EchoRequest"
    }
    patch = op_of("PATCH", "/t/{inner.label}", doc)
    assert patch["parameters"][0]["description"] == "matches labels/* (slashes included)"
    assert op_of("DELETE", "/t/missing/{shelf}", doc)["operationId"] == "Echo_Missing"


def test_document_is_valid_openapi() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(DOC)
    validator.validate(openapi.document([echo_service()]))


async def test_route_serves_the_document() -> None:
    route = openapi.route([PREDICT, REGISTRY])
    assert (route.method, route.template, route.name, route.probe) == (
        "GET",
        "/openapi.json",
        "OpenAPI",
        True,
    )
    response = await route.handler(Request("GET", "/openapi.json", "", {}, b""))
    assert response.status == 200 and response.content_type == "application/json"
    assert json.loads(response.body) == json.loads(json.dumps(DOC))  # type: ignore[arg-type]


@pytest.mark.integration
def test_the_router_serves_a_document_covering_its_routes(router: RouterThread) -> None:
    status, _, doc = fetch(router.http_address, "GET", "/openapi.json")
    assert status == 200 and doc["openapi"] == "3.1.0"
    live = {(r.method, openapi.path_of(r.template)) for r in router.app.http.router.routes}
    assert live == {(verb, path) for verb, path, _ in operations(doc)}
    # a real answer has exactly the documented fields
    status, _, got = fetch(router.http_address, "GET", "/v1/registry/models/simple")
    assert status == 200
    assert set(got) <= set(doc["components"]["schemas"]["tensorgate.v1.ModelVersion"]["properties"])
    assert set(got["backend"]) == set(doc["components"]["schemas"]["tensorgate.v1.Backend"]["properties"])
