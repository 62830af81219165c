"""The Open Inference Protocol's REST binding (KServe v2, as Triton serves it over HTTP).

`tritonclient.http` works against the router unchanged: health, server and model metadata,
readiness, the repository index, and inference with JSON tensors or the binary tensor data
extension (a JSON header of `Inference-Header-Content-Length` bytes, then each tensor's raw
bytes), so large tensors never become JSON number arrays. A request is translated to the gRPC
binding's ModelInferRequest, with every tensor as raw bytes, and served by the same dataplane.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tritonclient.grpc import service_pb2

from router import tensors
from router.config import HttpSettings
from router.dataplane import Dataplane
from router.errors import InvalidInput, Unimplemented
from router.http import jsonbody
from router.http.routes import JSON, Request, Response, Route

HEADER_LENGTH = "inference-header-content-length"
BINARY = "application/octet-stream"
EXTENSIONS = ["binary_tensor_data"]

_REQUEST_KEYS = frozenset(["id", "parameters", "inputs", "outputs"])
_INPUT_KEYS = frozenset(["name", "shape", "datatype", "parameters", "data"])
_OUTPUT_KEYS = frozenset(["name", "parameters"])
# request parameters that steer the HTTP answer and are not sent to the backend
_HTTP_PARAMETERS = frozenset(["binary_data_output"])


def _parameter(where: str, key: str, value: object, into: Any) -> None:
    """Sets one InferParameter from a JSON value."""
    if key.startswith("shared_memory_"):
        raise Unimplemented(
            f"{where}: shared memory ({key}) is not supported through the router; send the "
            "tensor in the body (binary_data_size)"
        )
    param = into[key]
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InvalidInput(f"{where}: parameter {key!r} does not fit int64")
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    elif isinstance(value, str):
        param.string_param = value
    else:
        raise InvalidInput(
            f"{where}: parameter {key!r} must be a boolean, number or string, got {type(value).__name__}"
        )


def _parameters_json(params: Any) -> dict[str, object]:
    """InferParameter map -> JSON object."""
    out: dict[str, object] = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(p, which)
    return out


def _object(where: str, value: object, allowed: frozenset[str] | None = None) -> dict[str, Any]:
    """value as a JSON object; with `allowed`, one whose keys are all allowed."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object, got {type(value).__name__}")
    if allowed is None:
        return value
    unknown = value.keys() - allowed
    if unknown:
        raise InvalidInput(
            f"{where}: unknown field(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(allowed))}"
        )
    return value


def _typed(where: str, value: object, kind: type, name: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInput(f"{where} must be {name}, got {type(value).__name__}")
    return value


def decode_infer(
    name: str, version: str, body: bytes, header_length: str | None, max_depth: int
) -> tuple[service_pb2.ModelInferRequest, dict[str, bool], bool]:
    """A REST inference request as (gRPC request with raw tensors, binary flag per requested
    output, binary flag for outputs not listed)."""
    if header_length is None:
        head, binary = jsonbody.load(body, max_depth, "request"), memoryview(b"")
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length!r} must be a byte count of at "
                f"most the body's {len(body)} bytes"
            )
        n = int(header_length)
        view = memoryview(body)
        head, binary = jsonbody.load(view[:n], max_depth, "request header"), view[n:]
    head = _object("the inference request", head, _REQUEST_KEYS)
    request = service_pb2.ModelInferRequest(model_name=name, model_version=version)
    if "id" in head:
        request.id = _typed("id", head["id"], str, "a string")
    params = _object("parameters", head.get("parameters", {}))
    binary_default = False
    for key, value in params.items():
        if key == "binary_data_output":
            binary_default = _typed("parameters.binary_data_output", value, bool, "a boolean")
        elif key not in _HTTP_PARAMETERS:
            _parameter("the inference request", key, value, request.parameters)

    inputs = _typed("inputs", head.get("inputs"), list, "a list of input tensors")
    offset = 0
    for i, raw_input in enumerate(inputs):
        item = _object(f"inputs[{i}]", raw_input, _INPUT_KEYS)
        where = f"inputs[{i}]"
        t = request.inputs.add()
        t.name = _typed(f"{where}.name", item.get("name"), str, "a string")
        where = f"input {t.name!r}"
        t.datatype = _typed(f"{where}: datatype", item.get("datatype"), str, "a string")
        tensors.check_datatype(where, t.datatype)
        shape = _typed(f"{where}: shape", item.get("shape"), list, "a list of integers")
        for d in shape:
            _typed(f"{where}: shape", d, int, "a list of integers")
        if any(not 0 <= d < 2**63 for d in shape):
            raise InvalidInput(f"{where}: shape {shape} must hold non-negative int64 sizes")
        t.shape.extend(shape)
        size = None
        item_params = _object(f"{where}: parameters", item.get("parameters", {}))
        for key, value in item_params.items():
            if key == "binary_data_size":
                size = _typed(f"{where}: binary_data_size", value, int, "an integer")
            else:
                _parameter(where, key, value, t.parameters)
        if size is not None:
            if "data" in item:
                raise InvalidInput(f"{where}: give data or binary_data_size, not both")
            if size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    f"{where}: binary_data_size {size} runs past the {len(binary)} bytes of "
                    f"binary data after the header (at offset {offset})"
                )
            request.raw_input_contents.append(bytes(binary[offset : offset + size]))
            offset += size
        elif "data" in item:
            request.raw_input_contents.append(tensors.json_to_raw(where, t.datatype, shape, item["data"]))
        else:
            raise InvalidInput(f"{where}: has neither data nor parameters.binary_data_size")
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data after the header belong to no input "
            "(check each input's binary_data_size)"
        )

    wanted: dict[str, bool] = {}
    outputs = _typed("outputs", head.get("outputs", []), list, "a list of requested outputs")
    for i, raw_output in enumerate(outputs):
        item = _object(f"outputs[{i}]", raw_output, _OUTPUT_KEYS)
        out = request.outputs.add()
        out.name = _typed(f"outputs[{i}].name", item.get("name"), str, "a string")
        out_params = _object(f"output {out.name!r}: parameters", item.get("parameters", {}))
        binary_out = binary_default
        for key, value in out_params.items():
            if key == "binary_data":
                binary_out = _typed(f"output {out.name!r}: binary_data", value, bool, "a boolean")
            else:
                _parameter(f"output {out.name!r}", key, value, out.parameters)
        wanted[out.name] = binary_out
    return request, wanted, binary_default


def encode_infer(
    response: service_pb2.ModelInferResponse, wanted: dict[str, bool], binary_default: bool
) -> Response:
    """A gRPC inference response as the REST binding's JSON, with binary tensors appended for
    the outputs asked for as binary data."""
    outputs: list[dict[str, object]] = []
    chunks: list[bytes] = []
    raw = response.raw_output_contents
    for i, out in enumerate(response.outputs):
        entry: dict[str, object] = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        params = _parameters_json(out.parameters)
        if i < len(raw):
            data = raw[i]
        else:  # a backend that answered with typed contents
            data = tensors.typed_to_raw(f"output {out.name!r}", out.datatype, out.shape, out.contents)
        if wanted.get(out.name, binary_default):
            params["binary_data_size"] = len(data)
            chunks.append(data)
        else:
            entry["data"] = tensors.raw_to_json(f"output {out.name!r}", out.datatype, out.shape, data)
        if params:
            entry["parameters"] = params
        outputs.append(entry)
    answer: dict[str, object] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        answer["id"] = response.id
    if response.parameters:
        answer["parameters"] = _parameters_json(response.parameters)
    answer["outputs"] = outputs
    head = jsonbody.dump(answer)
    if not chunks:
        return Response(head)
    return Response([head, *chunks], 200, BINARY, [(HEADER_LENGTH.title(), str(len(head)))])


def routes(dp: Dataplane, settings: HttpSettings) -> list[Route]:
    """The REST binding's routes, served by the dataplane."""

    async def live(request: Request) -> Response:
        return Response(b'{"live":true}')

    async def ready(request: Request) -> Response:
        ok = dp.server_ready()
        return Response(jsonbody.dump({"ready": ok}), 200 if ok else 400)

    async def server_metadata(request: Request) -> Response:
        meta = dp.server_metadata()
        return Response(
            jsonbody.dump(
                {"name": meta.name, "version": meta.version, "extensions": [*meta.extensions, *EXTENSIONS]}
            )
        )

    def _name(request: Request) -> tuple[str, str]:
        return request.params["name"], request.params.get("version", "")

    async def model_metadata(request: Request) -> Response:
        meta = dp.model_metadata(*_name(request))
        return Response(
            jsonbody.dump(
                {
                    "name": meta.name,
                    "versions": list(meta.versions),
                    "platform": meta.platform,
                    "inputs": [
                        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs
                    ],
                    "outputs": [
                        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.outputs
                    ],
                }
            )
        )

    async def model_ready(request: Request) -> Response:
        ok = await dp.model_ready(*_name(request))
        return Response(jsonbody.dump({"ready": ok}), 200 if ok else 400)

    async def model_config(request: Request) -> Response:
        raise Unimplemented(
            "the model configuration is Triton-specific; use the model "
            "metadata (GET /v2/models/{name}) on tensorgate"
        )

    async def repository_index(request: Request) -> Response:
        ready_only = False
        if request.body.strip():
            body = _object(
                "the index request",
                jsonbody.load(request.body, settings.max_json_depth),
                frozenset(["ready"]),
            )
            ready_only = _typed("ready", body.get("ready", False), bool, "a boolean")
        index = await dp.repository_index(ready_only)
        models = [
            {
                k: v
                for k, v in (
                    ("name", m.name),
                    ("version", m.version),
                    ("state", m.state),
                    ("reason", m.reason),
                )
                if v
            }
            for m in index.models
        ]
        return Response(jsonbody.dump(models))

    async def infer(request: Request) -> Response:
        if request.headers.get("content-type", JSON).startswith("multipart/"):
            raise InvalidInput(
                "multipart bodies are not supported; send JSON, or a JSON header "
                "followed by binary tensors (Inference-Header-Content-Length)"
            )
        header_length = request.headers.get(HEADER_LENGTH)
        args = (*_name(request), request.body, header_length, settings.max_json_depth)
        if header_length is None:
            json_bytes = len(request.body)
        else:  # decode_infer refuses a malformed length
            json_bytes = int(header_length) if header_length.isdigit() else 0
        if json_bytes >= jsonbody.OFFLOAD_BYTES:  # megabytes of JSON numbers: off the loop
            grpc_request, wanted, binary_default = await asyncio.to_thread(decode_infer, *args)
        else:
            grpc_request, wanted, binary_default = decode_infer(*args)
        response = await dp.model_infer(grpc_request, request.timeout)
        as_json = sum(
            len(raw)
            for out, raw in zip(response.outputs, response.raw_output_contents, strict=False)
            if not wanted.get(out.name, binary_default)
        )
        if as_json >= jsonbody.OFFLOAD_BYTES // 8:  # each number is several bytes of JSON
            return await asyncio.to_thread(encode_infer, response, wanted, binary_default)
        return encode_infer(response, wanted, binary_default)

    table = [
        ("GET", "/v2/health/live", live, "ServerLive", True),
        ("GET", "/v2/health/ready", ready, "ServerReady", True),
        ("GET", "/v2", server_metadata, "ServerMetadata", True),
        ("POST", "/v2/repository/index", repository_index, "RepositoryIndex", True),
    ]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        table += [
            ("GET", prefix, model_metadata, "ModelMetadata", True),
            ("GET", f"{prefix}/ready", model_ready, "ModelReady", True),
            ("GET", f"{prefix}/config", model_config, "ModelConfig", True),
            ("POST", f"{prefix}/infer", infer, "ModelInfer", False),
        ]
    return [Route(m, t, h, n, p) for m, t, h, n, p in table]
