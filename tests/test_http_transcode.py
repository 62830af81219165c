"""HTTP/JSON transcoding of tensorgate.v1 from its google.api.http annotations (router.http.transcode).

Unit tests build request messages from HTTP requests on the real tensorgate.v1 descriptors (and on
bindings made up over them, for shapes of binding the protos do not have yet), and serve a service
defined at run time (tgtest.Echo: no codegen, no route code) through the real HttpServer. The
integration tests call the router's HTTP edge in front of the real Triton and compare with gRPC.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import http.client
import json
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from tensorgate.v1 import inference_pb2, registry_pb2, registry_pb2_grpc

from router import errors
from router.config import HttpSettings
from router.grpc.calls import CallTracker
from router.grpc.tensorgate_api import RegistryServicer
from router.http import transcode
from router.http.routes import Request, Router, Template
from router.http.server import HttpServer
from router.http.transcode import Binding, HttpServicerContext, Transcoder, bindings
from tests.conftest import RouterThread, predict, router_settings

SETTINGS = HttpSettings()
PREDICT = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
REGISTRY = registry_pb2.DESCRIPTOR.services_by_name["ModelRegistry"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def binding(service: ServiceDescriptor, method: str, index: int = 0, **changes: Any) -> Binding:
    """A binding of the protos, or one made up over their messages (changes: verb, template, ...)."""
    found = next(b for b in bindings([service]) if b.method.name == method and b.index == index)
    return dataclasses.replace(found, **changes)


def build(b: Binding, path: str, body: Any = b"", query: str = "") -> Any:
    """The request message the transcoder builds for an HTTP request."""
    params = Template(b.template).match(path)
    assert params is not None, f"{path} does not match {b.template}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Transcoder(b, SETTINGS).request(Request(b.verb, path, query, {}, data, params))


def error(b: Binding, path: str, body: Any = b"", query: str = "") -> str:
    """The InvalidInput message of a request the transcoder refuses."""
    with pytest.raises(errors.InvalidInput) as info:
        build(b, path, body, query)
    return info.value.message


def tensor_json(name: str, array: np.ndarray) -> dict[str, Any]:
    return {"name": name, "datatype": "INT32", "shape": list(array.shape), "data": b64(array.tobytes())}


# -- bindings ---------------------------------------------------------------------------------


def test_every_annotated_rule_and_additional_binding_is_a_binding() -> None:
    found = [(b.method.name, b.verb, b.template, b.body, b.index) for b in bindings([PREDICT, REGISTRY])]
    assert found == [
        ("Predict", "POST", "/v1/models/{model}:predict", "*", 0),
        ("Predict", "POST", "/v1/models/{model}/versions/{version}:predict", "*", 1),
        ("RegisterModel", "POST", "/v1/registry/models", "model", 0),
        ("ListModels", "GET", "/v1/registry/models", "", 0),
        ("GetModel", "GET", "/v1/registry/models/{name}/versions/{version}", "", 0),
        ("GetModel", "GET", "/v1/registry/models/{name}", "", 1),
        ("RemoveModel", "DELETE", "/v1/registry/models/{name}/versions/{version}", "", 0),
        ("RemoveModel", "DELETE", "/v1/registry/models/{name}", "", 1),
        ("SetTrafficPolicy", "PUT", "/v1/registry/models/{policy.model}/traffic", "policy", 0),
        ("GetTrafficPolicy", "GET", "/v1/registry/models/{model}/traffic", "", 0),
        ("PromoteVersion", "POST", "/v1/registry/models/{model}/traffic:promote", "*", 0),
        ("RollbackTraffic", "POST", "/v1/registry/models/{model}/traffic:rollback", "*", 0),
        ("GetTrafficHistory", "GET", "/v1/registry/models/{model}/traffic/history", "", 0),
    ]


# -- path, body, query ------------------------------------------------------------------------


def test_path_variables_set_their_fields_percent_decoded() -> None:
    m = build(binding(PREDICT, "Predict", 1), "/v1/models/simple/versions/2:predict", {})
    assert (m.model, m.version) == ("simple", "2")
    m = build(binding(REGISTRY, "GetModel", 1), "/v1/registry/models/wi%2Fne%20x")
    assert (m.name, m.version) == ("wi/ne x", "")
    # a dotted variable sets a nested field; a made-up binding over the real RegisterModelRequest
    b = binding(
        REGISTRY, "RegisterModel", verb="GET", template="/t/{model.name}/{model.max_batch_size}", body=""
    )
    m = build(b, "/t/adder/8")
    assert (m.model.name, m.model.max_batch_size) == ("adder", 8)
    assert "path variable model.max_batch_size: expected an integer (int32)" in error(b, "/t/adder/eight")


def test_body_star_is_the_whole_message_with_bytes_decoded() -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    body = {
        "items": [
            {
                "tensors": {
                    "tensors": [tensor_json("INPUT0", a), {**tensor_json("INPUT1", a), "shape": ["1", 16.0]}]
                }
            },
            {"image": {"data": b64(b"\x89PNG\x00\xff"), "input": "pixels"}},
            {"table": {"records": [{"values": {"age": "3"}}], "csv": b64(b"a,b\n1,2\n")}},
            {"text": {"text": "h\u00e9llo"}},
        ],
        "outputs": ["OUTPUT0"],
    }
    m = build(binding(PREDICT, "Predict"), "/v1/models/simple:predict", body)
    expected = inference_pb2.PredictRequest(model="simple", outputs=["OUTPUT0"])
    t = expected.items.add().tensors.tensors
    t.add(name="INPUT0", datatype="INT32", shape=[1, 16], data=a.tobytes())
    t.add(name="INPUT1", datatype="INT32", shape=[1, 16], data=a.tobytes())
    expected.items.add().image.CopyFrom(inference_pb2.ImagePayload(data=b"\x89PNG\x00\xff", input="pixels"))
    table = expected.items.add().table
    table.records.add().values["age"] = "3"
    table.csv = b"a,b\n1,2\n"
    expected.items.add().text.text = "h\u00e9llo"
    assert m == expected


def test_body_field_fills_that_field_and_proto_names_are_accepted() -> None:
    body = {
        "name": "wine",
        "version": "2",
        "backend": {"kind": "triton", "endpoints": ["127.0.0.1:8001"], "model": "wine_onnx"},
        "max_batch_size": 8,  # the .proto name
        "batching": {"maxBatchSize": 4, "maxQueueDelayUs": "250", "preferredSizes": [2, 4]},
        "transforms": [{"kind": "table", "columns": ["a", "b"]}],
        "createdAt": "2026-01-02T03:04:05Z",
    }
    m = build(binding(REGISTRY, "RegisterModel"), "/v1/registry/models", body)
    model = m.model
    assert (model.name, model.version, model.max_batch_size) == ("wine", "2", 8)
    assert list(model.backend.endpoints) == ["127.0.0.1:8001"] and model.backend.model == "wine_onnx"
    assert model.batching.max_queue_delay_us == 250 and list(model.batching.preferred_sizes) == [2, 4]
    assert json_format.MessageToDict(model.transforms[0]) == {"kind": "table", "columns": ["a", "b"]}
    assert model.created_at.seconds == 1767323045


def test_query_string_sets_unbound_fields_repeated_and_nested() -> None:
    m = build(binding(REGISTRY, "ListModels"), "/v1/registry/models", query="name=wine%20red")
    assert m.name == "wine red"
    # made-up GET bindings over the real messages, for the repeated and nested cases
    b = binding(REGISTRY, "RegisterModel", verb="GET", template="/t/{model.name}", body="")
    query = (
        "model.version=2&model.backend.endpoints=a:1&model.backend.endpoints=b:2"
        "&model.batching.maxQueueDelayUs=100&model.batching.preferred_sizes=2&model.batching.preferredSizes=4"
    )
    m = build(b, "/t/adder", query=query)
    assert (m.model.name, m.model.version) == ("adder", "2")
    assert list(m.model.backend.endpoints) == ["a:1", "b:2"]
    assert m.model.batching.max_queue_delay_us == 100
    p = build(
        binding(PREDICT, "Predict", verb="GET", body=""), "/v1/models/m:predict", query="outputs=a&outputs=b"
    )
    assert list(p.outputs) == ["a", "b"]


@pytest.mark.parametrize(
    ("b", "path", "query", "text"),
    [
        (
            binding(REGISTRY, "ListModels"),
            "/v1/registry/models",
            "nam=wine",
            "query parameter nam: names no field; ListModelsRequest has name",
        ),
        (
            binding(REGISTRY, "ListModels"),
            "/v1/registry/models",
            "name=a&name=b",
            "query parameter name: is given more than once",
        ),
        (
            binding(REGISTRY, "GetModel", 1),
            "/v1/registry/models/wine",
            "name=x",
            "query parameter name: name is set by the path",
        ),
        (
            binding(REGISTRY, "GetModel", 1),
            "/v1/registry/models/wine",
            "version=3&x.y=1",
            "query parameter x.y: names no field",
        ),
        (
            binding(PREDICT, "Predict"),
            "/v1/models/m:predict",
            "version=1",
            'query parameter version: the body carries every field of this call (body: "*")',
        ),
        (
            binding(REGISTRY, "RegisterModel"),
            "/v1/registry/models",
            "model.name=x",
            "query parameter model.name: model is set by the body",
        ),
        (
            binding(REGISTRY, "RegisterModel", verb="GET", body=""),
            "/v1/registry/models",
            "model.backend=x",
            "query parameter model.backend: backend is a message; set its fields as model.backend.FIELD=...",
        ),
        (
            binding(REGISTRY, "RegisterModel", verb="GET", body=""),
            "/v1/registry/models",
            "model.nope.x=1",
            "query parameter model.nope.x: names no field; ModelVersion has name, version, backend",
        ),
        (
            binding(REGISTRY, "RegisterModel", verb="GET", body=""),
            "/v1/registry/models",
            "model.batching.maxBatchSize=many",
            "query parameter model.batching.maxBatchSize: expected an integer (int32), got the string 'many'",
        ),
        (
            binding(REGISTRY, "RegisterModel", verb="GET", body=""),
            "/v1/registry/models",
            "model.name.x=1",
            "query parameter model.name.x: name has no fields to set with a dotted name",
        ),
    ],
    ids=[
        "unknown",
        "twice",
        "path-bound",
        "nested-unknown",
        "body-star",
        "body-field",
        "message-leaf",
        "unknown-inner",
        "wrong-type",
        "scalar-parent",
    ],
)
def test_query_string_errors_name_the_parameter(b: Binding, path: str, query: str, text: str) -> None:
    assert text in error(b, path, query=query)


# -- what the client got wrong ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("aGVs!G8=", "'!' is not in the base64 alphabet"),
        ("aGVs bG8=", "' ' is not in the base64 alphabet"),
        ("YQ=", "2 characters take 2 '=' of padding or none, not 1"),
        ("YWJj====", "4 characters take 0 '=' of padding or none, not 4"),
        ("a", "a length of 1 (padding aside) cannot encode whole bytes"),
        ("ab=c", "'=' inside the text"),
        ("ab+/-_", "mixes the standard (+/) and URL-safe (-_) alphabets"),
        ("h\u00e9", "non-ASCII characters"),
    ],
)
def test_bad_base64_is_refused_naming_the_field(data: str, problem: str) -> None:
    a = np.zeros((1, 16), np.int32)
    b = binding(PREDICT, "Predict")
    body: dict[str, Any] = {
        "items": [
            {"tensors": {"tensors": [tensor_json("INPUT0", a), {**tensor_json("INPUT1", a), "data": data}]}}
        ]
    }
    message = error(b, "/v1/models/m:predict", body)
    assert message.startswith("items[0].tensors.tensors[1].data: not valid base64: ") and problem in message
    body = {"items": [{"text": {"text": "x"}}, {"image": {"data": data}}]}
    assert error(b, "/v1/models/m:predict", body).startswith("items[1].image.data: not valid base64")
    body = {"items": [{"table": {"csv": data}}]}
    assert error(b, "/v1/models/m:predict", body).startswith("items[0].table.csv: not valid base64")


def test_base64_standard_url_safe_padded_or_not_is_accepted() -> None:
    raw = bytes(range(256)) * 3 + b"\xfb\xff"
    b = binding(PREDICT, "Predict")
    for text in (
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ):
        m = build(b, "/v1/models/m:predict", {"items": [{"image": {"data": text}}]})
        assert m.items[0].image.data == raw
    assert build(b, "/v1/models/m:predict", {"items": [{"image": {"data": ""}}]}).items[0].image.data == b""


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"modle": "x"}, "modle: unknown field; PredictRequest has model, version, items, outputs"),
        (
            {"items": [{"tensors": {"tensors": [{"name": "a", "dtype": "INT32"}]}}]},
            "items[0].tensors.tensors[0].dtype: unknown field; Tensor has name, datatype, shape, data",
        ),
        ({"model": 5}, "model: expected a string, got the number 5"),
        ({"items": {}}, "items: expected an array, got an object"),
        ({"items": [[]]}, "items[0]: expected an object (Item), got an array"),
        ({"items": [None]}, "items[0]: null is not an array element"),
        (
            {"items": [{"tensors": {"tensors": [{"shape": [1, "x"]}]}}]},
            "items[0].tensors.tensors[0].shape[1]: expected an integer (int64), got the string 'x'",
        ),
        (
            {"items": [{"tensors": {"tensors": [{"shape": [1.5]}]}}]},
            "items[0].tensors.tensors[0].shape[0]: expected an integer (int64), got 1.5",
        ),
        (
            {"items": [{"tensors": {"tensors": [{"shape": [True]}]}}]},
            "items[0].tensors.tensors[0].shape[0]: expected an integer (int64) as a number or string, "
            "got a boolean",
        ),
        (
            {"items": [{"tensors": {"tensors": [{"shape": [2**63]}]}}]},
            "items[0].tensors.tensors[0].shape[0]: 9223372036854775808 is out of range for int64",
        ),
        ({"outputs": "OUTPUT0"}, "outputs: expected an array, got the string 'OUTPUT0'"),
        (
            {"items": [{"table": {"records": [{"values": {"age": 3}}]}}]},
            'items[0].table.records[0].values["age"]: expected a string, got the number 3',
        ),
        (
            {"items": [{"image": {"data": "YQ==", "input": "x"}, "text": {"text": "hi"}}]},
            "items[0]: image and text are both set; "
            "give at most one of tensors, image, text, table (oneof payload)",
        ),
        ({"model": "simple", "model_": 1}, "model_: unknown field"),
        ({"requestId": "x"}, "requestId: unknown field"),
        ([], "the body: expected an object (PredictRequest), got an array"),
    ],
    ids=[
        "unknown",
        "nested-unknown",
        "string",
        "array",
        "object",
        "null-element",
        "int-text",
        "int-fraction",
        "bool-for-int",
        "int-range",
        "scalar-for-array",
        "map-value",
        "oneof",
        "near-name",
        "response-field",
        "not-object",
    ],
)
def test_wrong_fields_and_types_are_refused_naming_the_field(body: Any, text: str) -> None:
    assert text in error(binding(PREDICT, "Predict"), "/v1/models/simple:predict", body)


def test_registry_body_errors_name_the_request_field() -> None:
    b = binding(REGISTRY, "RegisterModel")
    assert error(b, "/v1/registry/models", {"name": "a", "batching": {"maxBatchSize": 2**31}}) == (
        "model.batching.maxBatchSize: 2147483648 is out of range for int32"
    )
    assert error(b, "/v1/registry/models", {"name": "a", "createdAt": "yesterday"}).startswith(
        "model.createdAt: Failed to parse timestamp"
    )
    assert error(b, "/v1/registry/models", {"name": "a", "max_batch_size": 1, "maxBatchSize": 2}) == (
        "model.maxBatchSize: the field is given twice, as max_batch_size and maxBatchSize"
    )
    assert error(b, "/v1/registry/models", [1]) == "model: expected an object (ModelVersion), got an array"


def test_path_and_body_must_agree() -> None:
    b = binding(PREDICT, "Predict", 1)
    path = "/v1/models/simple/versions/2:predict"
    assert error(b, path, {"model": "other"}) == (
        "model: the path says 'simple' but the body says 'other'; they must agree"
    )
    assert "version: the path says '2' but the body says '3'" in error(b, path, {"version": "3"})
    m = build(b, path, {"model": "simple", "version": "2", "outputs": ["o"]})
    assert (m.model, m.version, list(m.outputs)) == ("simple", "2", ["o"])
    # a dotted path variable inside the body field
    rb = binding(REGISTRY, "RegisterModel", template="/t/{model.name}")
    assert build(rb, "/t/adder", {"name": "adder", "version": "1"}).model.version == "1"
    assert "model.name: the path says 'adder' but the body says 'other'" in error(
        rb, "/t/adder", {"name": "other"}
    )


def test_body_handling_empty_malformed_deep_and_on_get() -> None:
    m = build(binding(PREDICT, "Predict"), "/v1/models/simple:predict", b"  \n")
    assert m == inference_pb2.PredictRequest(model="simple")
    assert error(binding(PREDICT, "Predict"), "/v1/models/s:predict", b'{"model": ').startswith(
        "malformed JSON body: Expecting value at line 1 column 11"
    )
    deep = b'{"items": [' + b"[" * 40 + b"]" * 40 + b"]}"
    assert "http.max_json_depth=32" in error(binding(PREDICT, "Predict"), "/v1/models/s:predict", deep)
    # GET and DELETE bindings take no body: one sent is refused, not ignored
    assert error(binding(REGISTRY, "ListModels"), "/v1/registry/models", {"name": "x"}) == (
        "GET /v1/registry/models takes no body; send the fields in the path and query string"
    )
    assert build(binding(REGISTRY, "RemoveModel", 1), "/v1/registry/models/x", b"\r\n").name == "x"


# -- responses --------------------------------------------------------------------------------


def test_response_is_proto3_json_with_defaults() -> None:
    t = Transcoder(binding(PREDICT, "Predict"), SETTINGS)
    response = inference_pb2.PredictResponse(model="simple", request_id="r1")
    result = response.results.add()
    result.outputs.add(name="OUT", datatype="INT64", shape=[1, 2], data=b"\x01\x02")
    result.classifications.add(output="OUT", row=0, index=7, label="seven", score=0.5)
    answer = t.response(response)
    assert (answer.status, answer.content_type) == (200, "application/json")
    assert json.loads(answer.body) == {  # type: ignore[arg-type]
        "model": "simple",
        "version": "",
        "requestId": "r1",
        "results": [
            {
                "outputs": [{"name": "OUT", "datatype": "INT64", "shape": ["1", "2"], "data": "AQI="}],
                "classifications": [
                    {"output": "OUT", "row": 0, "index": "7", "label": "seven", "score": 0.5}
                ],
            }
        ],
    }
    # serialized bytes (what a servicer may answer on gRPC) are answered the same
    assert t.response(response.SerializeToString()).body == answer.body


def test_response_body_field_is_honoured() -> None:
    removed = registry_pb2.RemoveModelResponse()
    removed.removed.add(name="a", version="1")
    t = Transcoder(binding(REGISTRY, "RemoveModel", response_body="removed"), SETTINGS)
    assert [m["version"] for m in json.loads(t.response(removed).body)] == ["1"]  # type: ignore[arg-type]
    got = registry_pb2.ModelVersion(name="a")
    t = Transcoder(binding(REGISTRY, "GetModel", response_body="backend"), SETTINGS)
    assert json.loads(t.response(got).body) == {  # type: ignore[arg-type]
        "kind": "",
        "endpoints": [],
        "model": "",
        "version": "",
    }


# -- calling the servicer ---------------------------------------------------------------------


async def test_servicer_context_deadline_abort_and_status() -> None:
    ctx = HttpServicerContext(Request("GET", "/", "", {"x-a": "1"}, b""))
    assert ctx.time_remaining() is None and ctx.invocation_metadata() == (("x-a", "1"),)
    assert ctx.failure() is None
    timed = HttpServicerContext(Request("GET", "/", "", {}, b"", timeout=2.0))
    remaining = timed.time_remaining()
    assert remaining is not None and 1.5 < remaining <= 2.0
    with pytest.raises(errors.InvalidInput, match="bad thing"):
        await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad thing")
    with pytest.raises(errors.ModelNotFound):
        await ctx.abort(grpc.StatusCode.NOT_FOUND, "gone")
    ctx.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
    ctx.set_details("full")
    failed = ctx.failure()
    assert isinstance(failed, errors.Overloaded) and failed.message == "full"


class FakeAdmin:
    """A stand-in for RegistryAdmin (no backend), recording what the servicer asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    async def list_models(self, name: str) -> list[registry_pb2.ModelVersion]:
        self.calls.append(("list", name))
        return [registry_pb2.ModelVersion(name=name or "any", version="1")]

    async def get(self, name: str, version: str) -> registry_pb2.ModelVersion:
        self.calls.append(("get", name, version))
        raise errors.ModelNotFound(f"model {name} is not registered")


async def test_routes_call_the_real_servicers_plain_methods() -> None:
    admin = FakeAdmin()
    tracker = CallTracker()
    servicer = RegistryServicer(admin, tracker)  # type: ignore[arg-type]
    router = Router()
    for route in transcode.routes([(REGISTRY, servicer)], SETTINGS):
        router.add(route)
    assert [(r.method, r.template, r.name, r.probe) for r in router.routes][2:4] == [
        ("GET", "/v1/registry/models/{name}/versions/{version}", "GetModel", False),
        ("GET", "/v1/registry/models/{name}", "GetModel", False),
    ]
    route, params = router.match("GET", "/v1/registry/models")
    response = await route.handler(Request("GET", "/v1/registry/models", "name=wine", {}, b"", params))
    assert json.loads(response.body)["models"][0]["name"] == "wine"  # type: ignore[arg-type]
    route, params = router.match("GET", "/v1/registry/models/x/versions/2")
    with pytest.raises(errors.ModelNotFound, match="model x is not registered"):
        await route.handler(Request("GET", "/v1/registry/models/x/versions/2", "", {}, b"", params))
    assert admin.calls == [("list", "wine"), ("get", "x", "2")]
    assert tracker.inflight == 0  # the gRPC wrapper was not used: dispatch does its work


# -- a service defined at run time: no codegen, no route code ---------------------------------


def _echo_file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name="tgtest/echo_http.proto",
        package="tgtest",
        syntax="proto3",
        dependency=["google/api/annotations.proto"],
    )
    f.enum_type.add(name="Color").value.extend(
        [
            descriptor_pb2.EnumValueDescriptorProto(name=n, number=i)
            for i, n in enumerate(["COLOR_UNSET", "RED"])
        ]
    )
    F = descriptor_pb2.FieldDescriptorProto
    inner = f.message_type.add(name="Inner")
    inner.field.add(name="label", number=1, type=F.TYPE_STRING, json_name="label")
    inner.field.add(name="counts", number=2, type=F.TYPE_INT64, label=F.LABEL_REPEATED, json_name="counts")
    inner.field.add(name="flag", number=3, type=F.TYPE_BOOL, json_name="flag")
    req = f.message_type.add(name="EchoRequest")
    req.oneof_decl.add(name="pick")
    for name, number, ftype, extra in [
        ("shelf", 1, F.TYPE_STRING, {}),
        ("item_id", 2, F.TYPE_INT64, {}),
        ("color", 3, F.TYPE_ENUM, {"type_name": ".tgtest.Color"}),
        ("inner", 4, F.TYPE_MESSAGE, {"type_name": ".tgtest.Inner"}),
        ("tags", 5, F.TYPE_STRING, {"label": F.LABEL_REPEATED}),
        (
            "blobs",
            6,
            F.TYPE_MESSAGE,
            {"label": F.LABEL_REPEATED, "type_name": ".tgtest.EchoRequest.BlobsEntry"},
        ),
        ("ratio", 7, F.TYPE_DOUBLE, {}),
        ("a", 8, F.TYPE_STRING, {"oneof_index": 0}),
        ("b", 9, F.TYPE_INT32, {"oneof_index": 0}),
    ]:
        json_name = "".join(p if i == 0 else p.title() for i, p in enumerate(name.split("_")))
        req.field.add(name=name, number=number, type=ftype, json_name=json_name, **extra)
    entry = req.nested_type.add(name="BlobsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_INT32, json_name="key")
    entry.field.add(name="value", number=2, type=F.TYPE_BYTES, json_name="value")
    resp = f.message_type.add(name="EchoResponse")
    resp.field.add(
        name="echoed", number=1, type=F.TYPE_MESSAGE, type_name=".tgtest.EchoRequest", json_name="echoed"
    )
    resp.field.add(name="note", number=2, type=F.TYPE_STRING, json_name="note")
    service = f.service.add(name="Echo")
    echo = service.method.add(
        name="Echo", input_type=".tgtest.EchoRequest", output_type=".tgtest.EchoResponse"
    )
    rule = http_pb2.HttpRule(get="/t/shelves/{shelf}/items/{item_id}")
    rule.additional_bindings.add(post="/t/shelves/{shelf}:echo", body="inner", response_body="echoed")
    rule.additional_bindings.add(patch="/t/{inner.label=labels/*}", body="*")
    echo.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    missing = service.method.add(
        name="Missing", input_type=".tgtest.EchoRequest", output_type=".tgtest.EchoResponse"
    )
    missing.options.Extensions[annotations_pb2.http].CopyFrom(http_pb2.HttpRule(delete="/t/missing/{shelf}"))
    return f


def echo_service() -> ServiceDescriptor:
    """tgtest.Echo: a service made at run time, with an enum, a bool, an int-keyed bytes map, a
    oneof, a body field, a response_body and a dotted path variable."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindServiceByName("tgtest.Echo")
    except KeyError:
        pool.AddSerializedFile(_echo_file().SerializeToString())
        return pool.FindServiceByName("tgtest.Echo")


class EchoServicer:
    """tgtest.Echo's servicer: a plain async method, as `@unary` leaves it (`Missing` is absent)."""

    async def Echo(self, request: Message, context: HttpServicerContext) -> Message:
        shelf = request.shelf  # type: ignore[attr-defined]
        if shelf == "abort":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no shelf called abort")
        if shelf == "boom":
            raise RuntimeError("secret detail")
        if shelf == "status":
            context.set_code(grpc.StatusCode.ALREADY_EXISTS)
            context.set_details("shelf exists")
        cls = message_factory.GetMessageClass(echo_service().methods_by_name["Echo"].output_type)
        return cls(echoed=request, note=f"{context.time_remaining()}")


def fetch(
    address: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """One HTTP call with the standard library: status, headers, JSON body."""
    conn = http.client.HTTPConnection(address, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(data) if data else None
    finally:
        conn.close()


async def test_a_new_annotated_rpc_is_served_without_route_code(monkeypatch: pytest.MonkeyPatch) -> None:
    offloaded: list[str] = []
    to_thread = asyncio.to_thread

    async def spy(func: Any, /, *args: Any) -> Any:
        offloaded.append(getattr(func, "__name__", "?"))
        return await to_thread(func, *args)

    monkeypatch.setattr(transcode.asyncio, "to_thread", spy)
    service = echo_service()
    router = Router()
    for route in transcode.routes([(service, EchoServicer())], SETTINGS):
        router.add(route)
    server = HttpServer(router, SETTINGS, CallTracker())
    address = f"127.0.0.1:{await server.start('127.0.0.1', 0)}"

    async def call(
        method: str, path: str, body: Any = None, **headers: str
    ) -> tuple[int, dict[str, str], Any]:
        data = None if body is None else json.dumps(body).encode()
        return await asyncio.to_thread(fetch, address, method, path, data, headers)

    try:
        q = "color=RED&tags=a&tags=b&inner.counts=1&inner.counts=-2&inner.flag=true&ratio=0.5&b=3"
        status, _, answer = await call("GET", f"/t/shelves/s1/items/42?{q}", **{"grpc-timeout": "5S"})
        assert status == 200
        assert answer["echoed"] == {
            "shelf": "s1",
            "itemId": "42",
            "color": "RED",
            "tags": ["a", "b"],
            "inner": {"label": "", "counts": ["1", "-2"], "flag": True},
            "blobs": {},
            "ratio": 0.5,
            "b": 3,
        }
        assert 4 < float(answer["note"]) <= 5  # the grpc-timeout reached context.time_remaining()
        # body "inner", response_body "echoed"
        status, _, answer = await call("POST", "/t/shelves/s2:echo", {"label": "x", "flag": True})
        assert status == 200 and answer["shelf"] == "s2" and answer["inner"]["flag"] is True
        # body "*" with a dotted, multi-segment path variable; int-keyed map of bytes
        status, _, answer = await call("PATCH", "/t/labels/l1", {"blobs": {"7": b64(b"\x00\x01")}, "a": "x"})
        assert status == 200
        assert answer["echoed"]["inner"]["label"] == "labels/l1" and answer["echoed"]["blobs"] == {
            "7": "AAE="
        }
        # a body and an answer past OFFLOAD_BYTES: translated in a worker thread, same result
        big = bytes(range(256)) * (transcode.OFFLOAD_BYTES // 256 + 1)
        status, _, answer = await call("PATCH", "/t/labels/big", {"blobs": {"1": b64(big)}})
        assert status == 200 and base64.b64decode(answer["echoed"]["blobs"]["1"]) == big
        # (asyncio.to_thread is patched process-wide: other routers' registry polls show up too)
        assert [name for name in offloaded if name in ("request", "response")] == [
            "request",
            "response",
        ]
        for method, path, body, want, text in [
            ("GET", "/t/shelves/s/items/x", None, 400, "path variable item_id: expected an integer (int64)"),
            (
                "GET",
                "/t/shelves/s/items/1?inner.flag=yes",
                None,
                400,
                "query parameter inner.flag: expected true or false, got 'yes'",
            ),
            (
                "GET",
                "/t/shelves/s/items/1?color=BLUE",
                None,
                400,
                "query parameter color: expected one of COLOR_UNSET, RED (enum Color)",
            ),
            ("GET", "/t/shelves/s/items/1?a=x&b=1", None, 400, "give at most one of a, b (oneof pick)"),
            (
                "PATCH",
                "/t/labels/l1",
                {"blobs": {"k": "AA=="}},
                400,
                "blobs[\"k\"]: expected an integer (int32), got the string 'k'",
            ),
            ("PATCH", "/t/labels/l1", {"blobs": {"1": "A"}}, 400, 'blobs["1"]: not valid base64'),
            (
                "PATCH",
                "/t/labels/l1",
                {"inner": {"label": "other"}},
                400,
                "inner.label: the path says 'labels/l1' but the body says 'other'",
            ),
            ("PATCH", "/t/labels/l1", {"ratio": "fast"}, 400, "ratio: expected a number (double)"),
            ("GET", "/t/shelves/abort/items/1", None, 404, "no shelf called abort"),
            ("GET", "/t/shelves/status/items/1", None, 409, "shelf exists"),
            ("GET", "/t/shelves/boom/items/1", None, 500, "internal error; request id"),
            ("DELETE", "/t/missing/s", None, 501, "tgtest.Echo.Missing is not implemented"),
        ]:
            status, headers, answer = await call(method, path, body)
            assert (status, set(answer)) == (want, {"error", "request_id"}), (path, answer)
            assert text in answer["error"] and answer["request_id"] == headers["x-request-id"], (path, answer)
            assert "secret" not in answer["error"]
    finally:
        await server.stop()


# -- against the real router and Triton -------------------------------------------------------


def simple_request_json(model: str = "simple") -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    a = rng.integers(-100, 100, (1, 16), dtype=np.int32)
    b = rng.integers(-100, 100, (1, 16), dtype=np.int32)
    item = {"tensors": {"tensors": [tensor_json("INPUT0", a), tensor_json("INPUT1", b)]}}
    return {"items": [item, item]}, a, b


def post(address: str, path: str, body: Any, **headers: str) -> tuple[int, dict[str, str], Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return fetch(address, "POST", path, data, {"content-type": "application/json", **headers})


@pytest.mark.integration
def test_http_predict_answers_what_grpc_predict_answers(router: RouterThread) -> None:
    body, a, b = simple_request_json()
    status, headers, answer = post(router.http_address, "/v1/models/simple:predict", body)
    assert status == 200, answer
    assert (answer["model"], answer["version"]) == ("simple", "1")
    assert answer["requestId"] == headers["x-request-id"]
    request = json_format.ParseDict(body, inference_pb2.PredictRequest(model="simple"))
    expected = json_format.MessageToDict(
        predict(router.address, request), always_print_fields_with_no_presence=True
    )
    del expected["requestId"], answer["requestId"]
    assert answer == expected
    out = {
        t["name"]: np.frombuffer(base64.b64decode(t["data"]), np.int32)
        for t in answer["results"][1]["outputs"]
    }
    assert np.array_equal(out["OUTPUT0"], (a + b).ravel()) and np.array_equal(out["OUTPUT1"], (a - b).ravel())
    assert answer["results"][0]["outputs"][0]["shape"] == ["1", "16"]  # int64 as strings
    # the versioned binding, with output selection and the model given (agreeing) in the body too
    status, _, answer = post(
        router.http_address,
        "/v1/models/simple/versions/1:predict",
        {**body, "model": "simple", "outputs": ["OUTPUT1"]},
    )
    assert status == 200 and [t["name"] for t in answer["results"][0]["outputs"]] == ["OUTPUT1"]


@pytest.mark.integration
def test_http_registry_reads(router: RouterThread) -> None:
    status, _, listed = fetch(router.http_address, "GET", "/v1/registry/models?name=simple")
    assert status == 200
    assert [(m["name"], m["version"]) for m in listed["models"]] == [("simple", "1")]
    model = listed["models"][0]
    assert model["backend"]["kind"] == "triton" and model["maxBatchSize"] == 8
    assert [t["name"] for t in model["inputs"]] == ["INPUT0", "INPUT1"] and model["inputs"][0]["shape"] == [
        "-1",
        "16",
    ]
    for path in ("/v1/registry/models/simple", "/v1/registry/models/simple/versions/1"):
        status, _, got = fetch(router.http_address, "GET", path)
        assert status == 200 and got == model
    status, _, everything = fetch(router.http_address, "GET", "/v1/registry/models")
    assert status == 200 and {"simple", "dtypes", "slow"} <= {m["name"] for m in everything["models"]}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("method", "path", "body", "status", "text"),
    [
        ("POST", "/v1/models/simple:predict", b'{"items": [', 400, "malformed JSON body"),
        (
            "POST",
            "/v1/models/simple:predict",
            {"items": [], "color": "red"},
            400,
            "color: unknown field; PredictRequest has model, version, items, outputs",
        ),
        (
            "POST",
            "/v1/models/simple:predict",
            {
                "items": [
                    {
                        "tensors": {
                            "tensors": [
                                {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": "AAAA*AAA"}
                            ]
                        }
                    }
                ]
            },
            400,
            "items[0].tensors.tensors[0].data: not valid base64: '*' is not in the base64 alphabet",
        ),
        (
            "POST",
            "/v1/models/simple:predict",
            {"items": [{"tensors": {"tensors": {"name": "INPUT0"}}}]},
            400,
            "items[0].tensors.tensors: expected an array, got an object",
        ),
        ("POST", "/v1/models/simple:predict", {"outputs": [1]}, 400, "outputs[0]: expected a string"),
        (
            "POST",
            "/v1/models/simple:predict",
            {
                "items": [
                    {
                        "tensors": {
                            "tensors": [
                                {
                                    "name": "INPUT0",
                                    "datatype": "INT32",
                                    "shape": [1, 16],
                                    "data": b64(b"\x00" * 3),
                                }
                            ]
                        }
                    }
                ]
            },
            400,
            "needs 64 bytes",
        ),
        ("POST", "/v1/models/nope:predict", simple_request_json()[0], 404, "nope"),
        ("GET", "/v1/registry/models/nope", None, 404, "nope"),
        ("GET", "/v1/registry/models?model=simple", None, 400, "query parameter model: names no field"),
        ("GET", "/v1/registry/models/simple", b'{"name": "x"}', 400, "takes no body"),
        ("PUT", "/v1/registry/models", b"{}", 405, "use GET, POST"),
    ],
    ids=[
        "malformed",
        "unknown-field",
        "bad-base64",
        "wrong-type",
        "wrong-element",
        "short-tensor",
        "unknown-model",
        "unknown-registry-model",
        "unknown-query",
        "get-body",
        "wrong-verb",
    ],
)
def test_http_errors_have_status_and_json_body(
    router: RouterThread, method: str, path: str, body: Any, status: int, text: str
) -> None:
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    got, headers, answer = fetch(router.http_address, method, path, data)
    assert got == status, answer
    assert set(answer) == {"error", "request_id"} and answer["request_id"] == headers["x-request-id"]
    assert text in answer["error"]


@pytest.mark.integration
def test_http_grpc_timeout_reaches_the_call(router: RouterThread) -> None:
    body = {
        "items": [
            {
                "tensors": {
                    "tensors": [
                        {
                            "name": "SECONDS",
                            "datatype": "FP32",
                            "shape": [1],
                            "data": b64(np.float32(3).tobytes()),
                        }
                    ]
                }
            }
        ]
    }
    start = time.monotonic()
    status, _, answer = post(router.http_address, "/v1/models/slow:predict", body, **{"grpc-timeout": "300m"})
    assert status == 504, answer
    assert time.monotonic() - start < 2.5


@pytest.mark.integration
def test_http_register_get_predict_remove(triton: Any, tmp_path: Path) -> None:
    rt = RouterThread(router_settings(tmp_path / "r.db")).start()
    try:
        address = rt.http_address
        model = {
            "name": "adder",
            "version": "3",
            "backend": {"kind": "triton", "endpoints": [triton.grpc_address], "model": "simple"},
        }
        status, _, stored = post(address, "/v1/registry/models", model)
        assert status == 200, stored
        assert stored["name"] == "adder" and [t["name"] for t in stored["inputs"]] == ["INPUT0", "INPUT1"]
        assert stored["maxBatchSize"] == 8 and stored["createdAt"].endswith("Z")
        status, _, got = fetch(address, "GET", "/v1/registry/models/adder/versions/3")
        assert status == 200 and got == stored
        body, a, b = simple_request_json()
        status, _, answer = post(address, "/v1/models/adder:predict", body)
        assert status == 200 and answer["version"] == "3"
        out = np.frombuffer(base64.b64decode(answer["results"][0]["outputs"][0]["data"]), np.int32)
        assert np.array_equal(out, (a + b).ravel())
        # gRPC sees what HTTP registered
        with grpc.insecure_channel(rt.address) as channel:
            listed = registry_pb2_grpc.ModelRegistryStub(channel).ListModels(
                registry_pb2.ListModelsRequest(), timeout=5
            )
        assert [(m.name, m.version) for m in listed.models] == [("adder", "3")]
        status, _, bad = post(
            address, "/v1/registry/models", {**model, "backend": {"kind": "onnx", "endpoints": ["x:1"]}}
        )
        assert status == 400 and "backend.kind" in bad["error"]
        status, _, removed = fetch(address, "DELETE", "/v1/registry/models/adder")
        assert status == 200 and [m["version"] for m in removed["removed"]] == ["3"]
        status, _, missing = fetch(address, "GET", "/v1/registry/models/adder")
        assert status == 404 and "adder" in missing["error"]
        status, _, _ = post(address, "/v1/models/adder:predict", body)
        assert status == 404
    finally:
        rt.stop()
