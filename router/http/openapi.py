"""The OpenAPI 3.1 document of the HTTP edge, served at `GET /openapi.json`.

Two halves, one document:

- tensorgate's own API, generated from the same descriptors and `google.api.http` bindings the
  transcoder serves (router.http.transcode), so an annotated RPC appears here without new code:
  path parameters from the templates, query parameters from the fields neither the path nor the
  body binds, request and response bodies as JSON Schemas of the messages in the proto3 JSON
  mapping (lowerCamelCase names; int64 and uint64 as strings; bytes as base64 strings of format
  byte; enums as their names; maps as additionalProperties; repeated fields as arrays; a oneof as
  "at most one of"). Descriptors carry no comments, so schemas are titled with message names.
- the Open Inference Protocol's REST routes (router.http.oip), described by hand below as data,
  with the binary tensor data extension (`Inference-Header-Content-Length`).

Every error of every route has the body `{"error": str, "request_id": str}`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, ServiceDescriptor

from router import __version__
from router.http import jsonbody
from router.http.routes import Request, Response, Route
from router.http.transcode import Binding, bindings, is_map, is_scalar_leaf

PATH = "/openapi.json"
_VARIABLE = re.compile(r"\{([^}=]+)(=[^}]*)?\}")
_ERROR_RESPONSE = {"$ref": "#/components/responses/Error"}


def path_of(template: str) -> str:
    """The OpenAPI path of a `google.api.http` path template: `{name=models/*}` -> `{name}`."""
    return _VARIABLE.sub(r"{\1}", template)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# ---------------------------------------------------------------------------------------------
# JSON Schemas of protobuf messages (proto3 JSON mapping)

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}

# well-known types with their own JSON form
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "example": "1.5s",
    },
    "google.protobuf.FieldMask": {"type": "string", "description": "field paths, comma-separated"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "any JSON value"},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
}
_WRAPPED = {
    "DoubleValue": FieldDescriptor.TYPE_DOUBLE,
    "FloatValue": FieldDescriptor.TYPE_FLOAT,
    "Int64Value": FieldDescriptor.TYPE_INT64,
    "UInt64Value": FieldDescriptor.TYPE_UINT64,
    "Int32Value": FieldDescriptor.TYPE_INT32,
    "UInt32Value": FieldDescriptor.TYPE_UINT32,
    "BoolValue": FieldDescriptor.TYPE_BOOL,
    "StringValue": FieldDescriptor.TYPE_STRING,
    "BytesValue": FieldDescriptor.TYPE_BYTES,
}
for _name, _type in _WRAPPED.items():
    _schema = dict(_SCALARS[_type])
    _schema["type"] = [_schema["type"], "null"]
    _WELL_KNOWN[f"google.protobuf.{_name}"] = _schema


class Schemas:
    """The components/schemas of a document: one per message and enum type reached."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Any]] = {}

    def message(self, desc: Descriptor) -> dict[str, str]:
        """A $ref to the schema of a message type, adding it (and what it reaches) once."""
        name = desc.full_name
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursive types refer to themselves
            self.components[name] = self._message(desc)
        return _ref(name)

    def enum(self, desc: EnumDescriptor) -> dict[str, str]:
        """A $ref to the schema of an enum type: its value names (numbers are accepted too)."""
        name = desc.full_name
        if name not in self.components:
            self.components[name] = {
                "type": "string",
                "title": desc.name,
                "enum": [v.name for v in desc.values],
            }
        return _ref(name)

    def _message(self, desc: Descriptor) -> dict[str, Any]:
        known = _WELL_KNOWN.get(desc.full_name)
        if known is not None:
            return {"title": desc.name, **known}
        schema: dict[str, Any] = {
            "type": "object",
            "title": desc.name,
            "description": f"{desc.full_name} in the proto3 JSON mapping (field names in "
            "lowerCamelCase; the .proto names are accepted too)",
            "properties": {f.json_name: self.field(f) for f in desc.fields},
            "additionalProperties": False,
        }
        groups = []
        for oneof in desc.oneofs:
            members = [f.json_name for f in oneof.fields]
            if len(members) < 2:  # proto3 `optional`: a synthetic oneof of one field
                continue
            for f in oneof.fields:
                schema["properties"][f.json_name]["description"] = (
                    f"oneof {oneof.name}: at most one of {', '.join(members)}"
                )
            each = [{"required": [m]} for m in members]
            groups.append({"oneOf": [*each, {"not": {"anyOf": each}}]})
        if len(groups) == 1:
            schema.update(groups[0])
        elif groups:
            schema["allOf"] = groups
        return schema

    def element(self, field: FieldDescriptor) -> dict[str, Any]:
        """The schema of one value of a field (an element, when repeated)."""
        if field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
            return self.message(field.message_type)
        if field.type == FieldDescriptor.TYPE_ENUM:
            return self.enum(field.enum_type)
        return dict(_SCALARS[field.type])

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        """The schema of a field's whole JSON value."""
        if is_map(field):
            value = self.element(field.message_type.fields_by_name["value"])
            return {"type": "object", "additionalProperties": value}
        if field.is_repeated:
            return {"type": "array", "items": self.element(field)}
        return self.element(field)


# ---------------------------------------------------------------------------------------------
# Operations of the transcoded bindings


def _common_parameters() -> list[dict[str, str]]:
    return [{"$ref": "#/components/parameters/GrpcTimeout"}, {"$ref": "#/components/parameters/RequestId"}]


def _field_at(desc: Descriptor, dotted: str) -> FieldDescriptor:
    field = None
    for name in dotted.split("."):
        if field is not None:
            desc = field.message_type
        field = desc.fields_by_name[name]
    assert field is not None
    return field


def _query_fields(
    desc: Descriptor,
    bound: set[tuple[str, ...]],
    prefix: tuple[str, ...] = (),
    names: tuple[str, ...] = (),
    types: tuple[str, ...] = (),
) -> Iterable[tuple[str, FieldDescriptor]]:
    """(dotted JSON name, field) of every field a query parameter may set; a message type
    already on the way down (a recursive type) is not entered again."""
    types = (*types, desc.full_name)
    for f in desc.fields:
        path = (*prefix, f.name)
        if path in bound or is_map(f):
            continue
        if is_scalar_leaf(f):
            yield ".".join((*names, f.json_name)), f
        elif not f.is_repeated and f.message_type.full_name not in _WELL_KNOWN:
            if f.message_type.full_name not in types:
                yield from _query_fields(f.message_type, bound, path, (*names, f.json_name), types)


def _operation(binding: Binding, schemas: Schemas) -> dict[str, Any]:
    method = binding.method
    desc = method.input_type
    variables = [m.group(1) for m in _VARIABLE.finditer(binding.template)]
    patterns = {m.group(1): m.group(2)[1:] for m in _VARIABLE.finditer(binding.template) if m.group(2)}
    parameters: list[dict[str, Any]] = []
    for var in variables:
        parameter: dict[str, Any] = {
            "name": var,
            "in": "path",
            "required": True,
            "schema": schemas.element(_field_at(desc, var)),
        }
        if var in patterns:
            parameter["description"] = f"matches {patterns[var]} (slashes included)"
        parameters.append(parameter)
    bound = {tuple(v.split(".")) for v in variables}
    if binding.body and binding.body != "*":
        bound.add((binding.body,))
    if binding.body != "*":
        for name, field in _query_fields(desc, bound):
            schema = schemas.element(field)
            if field.is_repeated:
                parameters.append(
                    {
                        "name": name,
                        "in": "query",
                        "schema": {"type": "array", "items": schema},
                        "style": "form",
                        "explode": True,
                        "description": "repeat the parameter for each value",
                    }
                )
            else:
                parameters.append({"name": name, "in": "query", "schema": schema})
    op: dict[str, Any] = {
        "operationId": f"{binding.service.name}_{method.name}"
        + (f"_{binding.index}" if binding.index else ""),
        "tags": [binding.service.full_name],
        "summary": f"{method.full_name}, transcoded from gRPC",
        "parameters": [*parameters, *_common_parameters()],
    }
    if binding.body:
        if binding.body == "*":
            body = schemas.message(desc)
            note = f"the whole {desc.name}; path parameters given here too must agree with the path"
        else:
            body = schemas.field(desc.fields_by_name[binding.body])
            note = f"the {binding.body} field of {desc.name}"
        op["requestBody"] = {
            "required": True,
            "description": note,
            "content": {"application/json": {"schema": body}},
        }
    out = method.output_type
    answer = (
        schemas.message(out)
        if not binding.response_body
        else schemas.field(out.fields_by_name[binding.response_body])
    )
    op["responses"] = {
        "200": {"description": f"the {out.name}", "content": {"application/json": {"schema": answer}}},
        "default": _ERROR_RESPONSE,
    }
    return op


# ---------------------------------------------------------------------------------------------
# The Open Inference Protocol's REST routes, by hand (router.http.oip)

_PARAMETERS_SCHEMA = {
    "type": "object",
    "additionalProperties": {"type": ["boolean", "integer", "number", "string"]},
}
_OIP_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "title": "Error",
        "description": "the body of every error answer",
        "properties": {
            "error": {"type": "string", "description": "what went wrong, naming the field or limit"},
            "request_id": {"type": "string", "description": "the request id, also in x-request-id"},
        },
        "required": ["error", "request_id"],
    },
    "oip.Parameters": _PARAMETERS_SCHEMA,
    "oip.Live": {"type": "object", "properties": {"live": {"type": "boolean"}}, "required": ["live"]},
    "oip.Ready": {"type": "object", "properties": {"ready": {"type": "boolean"}}, "required": ["ready"]},
    "oip.ServerMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "version", "extensions"],
    },
    "oip.TensorMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string", "example": "FP32"},
            "shape": {"type": "array", "items": {"type": "integer"}, "description": "-1: any size"},
        },
        "required": ["name", "datatype", "shape"],
    },
    "oip.ModelMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _ref("oip.TensorMetadata")},
            "outputs": {"type": "array", "items": _ref("oip.TensorMetadata")},
        },
        "required": ["name", "versions", "platform", "inputs", "outputs"],
    },
    "oip.RepositoryIndexRequest": {
        "type": "object",
        "properties": {"ready": {"type": "boolean", "description": "only the models ready to serve"}},
        "additionalProperties": False,
    },
    "oip.RepositoryIndex": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "state": {"type": "string"},
                "reason": {"type": "string"},
            },
            "required": ["name"],
        },
    },
    "oip.TensorData": {
        "type": "array",
        "description": "the tensor's elements in row-major order, flat or nested by shape: numbers, "
        "booleans, or strings for BYTES",
    },
    "oip.RequestInput": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "example": "INT32"},
            "parameters": {
                **_PARAMETERS_SCHEMA,
                "properties": {
                    "binary_data_size": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "binary extension: the tensor is this many bytes of the "
                        "binary part, in input order; then `data` is absent",
                    }
                },
            },
            "data": _ref("oip.TensorData"),
        },
        "required": ["name", "shape", "datatype"],
        "additionalProperties": False,
    },
    "oip.RequestOutput": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "parameters": {
                **_PARAMETERS_SCHEMA,
                "properties": {
                    "binary_data": {
                        "type": "boolean",
                        "description": "binary extension: answer this output as raw bytes",
                    }
                },
            },
        },
        "required": ["name"],
        "additionalProperties": False,
    },
    "oip.InferenceRequest": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "parameters": {
                **_PARAMETERS_SCHEMA,
                "properties": {
                    "binary_data_output": {
                        "type": "boolean",
                        "description": "binary extension: answer every output as raw bytes",
                    }
                },
            },
            "inputs": {"type": "array", "items": _ref("oip.RequestInput")},
            "outputs": {
                "type": "array",
                "items": _ref("oip.RequestOutput"),
                "description": "outputs to return; all when absent",
            },
        },
        "required": ["inputs"],
        "additionalProperties": False,
    },
    "oip.ResponseOutput": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string"},
            "parameters": {
                **_PARAMETERS_SCHEMA,
                "properties": {
                    "binary_data_size": {
                        "type": "integer",
                        "description": "binary extension: the output is this many bytes of the "
                        "binary part, in output order",
                    }
                },
            },
            "data": _ref("oip.TensorData"),
        },
        "required": ["name", "shape", "datatype"],
    },
    "oip.InferenceResponse": {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": _ref("oip.Parameters"),
            "outputs": {"type": "array", "items": _ref("oip.ResponseOutput")},
        },
        "required": ["model_name", "model_version", "outputs"],
    },
}

_BINARY_NOTE = (
    "Binary tensor data extension: the body is a JSON header of Inference-Header-Content-Length "
    "bytes, then the raw bytes of every tensor that has parameters.binary_data_size, in order."
)
_HEADER_LENGTH_PARAMETER = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "schema": {"type": "integer", "minimum": 0},
    "description": "binary extension: the length of the JSON header at the start of the body; "
    "absent: the body is all JSON",
}


def _json(schema_name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema_name)}}}


def _oip_paths() -> list[tuple[str, str, dict[str, Any]]]:
    """(method, template, operation) of every Open Inference Protocol REST route."""
    tag = ["Open Inference Protocol"]
    ready_answers = {
        "200": _json("oip.Ready", "ready"),
        "400": _json("oip.Ready", "not ready ({'ready': false})"),
        "default": _ERROR_RESPONSE,
    }
    ops: list[tuple[str, str, dict[str, Any]]] = [
        (
            "GET",
            "/v2/health/live",
            {"operationId": "ServerLive", "responses": {"200": _json("oip.Live", "the router is live")}},
        ),
        ("GET", "/v2/health/ready", {"operationId": "ServerReady", "responses": ready_answers}),
        (
            "GET",
            "/v2",
            {
                "operationId": "ServerMetadata",
                "responses": {"200": _json("oip.ServerMetadata", "the server"), "default": _ERROR_RESPONSE},
            },
        ),
        (
            "POST",
            "/v2/repository/index",
            {
                "operationId": "RepositoryIndex",
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("oip.RepositoryIndexRequest")}},
                },
                "responses": {"200": _json("oip.RepositoryIndex", "the models"), "default": _ERROR_RESPONSE},
            },
        ),
    ]
    for prefix, suffix in (("/v2/models/{name}", ""), ("/v2/models/{name}/versions/{version}", "_version")):
        path_params: list[dict[str, Any]] = [
            {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
        ]
        if suffix:
            path_params.append(
                {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
            )
        ops += [
            (
                "GET",
                prefix,
                {
                    "operationId": f"ModelMetadata{suffix}",
                    "parameters": path_params,
                    "responses": {"200": _json("oip.ModelMetadata", "the model"), "default": _ERROR_RESPONSE},
                },
            ),
            (
                "GET",
                f"{prefix}/ready",
                {"operationId": f"ModelReady{suffix}", "parameters": path_params, "responses": ready_answers},
            ),
            (
                "GET",
                f"{prefix}/config",
                {
                    "operationId": f"ModelConfig{suffix}",
                    "parameters": path_params,
                    "description": "Triton-specific; always 501 on tensorgate (use the model metadata)",
                    "responses": {"501": _ERROR_RESPONSE},
                },
            ),
            (
                "POST",
                f"{prefix}/infer",
                {
                    "operationId": f"ModelInfer{suffix}",
                    "description": _BINARY_NOTE,
                    "parameters": [*path_params, _HEADER_LENGTH_PARAMETER],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": _ref("oip.InferenceRequest")},
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"},
                                "x-json-header": _ref("oip.InferenceRequest"),
                            },
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "the outputs; "
                            + _BINARY_NOTE.replace("parameters.binary", "binary"),
                            "headers": {
                                "Inference-Header-Content-Length": {
                                    "description": "binary extension: the JSON header's length, when "
                                    "the answer carries binary outputs",
                                    "schema": {"type": "integer", "minimum": 0},
                                }
                            },
                            "content": {
                                "application/json": {"schema": _ref("oip.InferenceResponse")},
                                "application/octet-stream": {
                                    "schema": {"type": "string", "format": "binary"},
                                    "x-json-header": _ref("oip.InferenceResponse"),
                                },
                            },
                        },
                        "default": _ERROR_RESPONSE,
                    },
                },
            ),
        ]
    for _, _, op in ops:
        op["tags"] = tag
        op["parameters"] = [*op.get("parameters", []), *_common_parameters()]
    return ops


# ---------------------------------------------------------------------------------------------
# The document


def document(services: Sequence[ServiceDescriptor]) -> dict[str, Any]:
    """The OpenAPI document of the edge: the OIP routes, every binding of the services' methods,
    and /openapi.json itself."""
    schemas = Schemas()
    schemas.components.update(_OIP_SCHEMAS)
    paths: dict[str, dict[str, Any]] = {}

    def add(method: str, template: str, op: dict[str, Any]) -> None:
        item = paths.setdefault(path_of(template), {})
        verb = method.lower()
        if verb in item:
            raise ValueError(f"OpenAPI: {method} {path_of(template)} is described twice")
        item[verb] = op

    for method, template, op in _oip_paths():
        add(method, template, op)
    for binding in bindings(services):
        add(binding.verb, binding.template, _operation(binding, schemas))
    add(
        "GET",
        PATH,
        {
            "operationId": "OpenAPI",
            "tags": ["Meta"],
            "summary": "this document",
            "parameters": _common_parameters(),
            "responses": {
                "200": {
                    "description": "the OpenAPI document",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        },
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tensorgate",
            "version": __version__,
            "description": "tensorgate's HTTP/JSON edge: the Open Inference Protocol's REST binding "
            "(KServe v2) and tensorgate's own API, transcoded from its gRPC services.",
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "parameters": {
                "GrpcTimeout": {
                    "name": "grpc-timeout",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[0-9]{1,8}[HMSmun]$", "example": "500m"},
                    "description": "the call's deadline, as in gRPC: up to 8 digits and a unit "
                    "(H, M, S, m, u, n); past it the answer is 504",
                },
                "RequestId": {
                    "name": "x-request-id",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:\\-]{1,128}$"},
                    "description": "the request id to use (answered in x-request-id); one is made up "
                    "when absent",
                },
            },
            "responses": {
                "Error": {
                    "description": "an error: 400 invalid input, 404 unknown model or route, 405, "
                    "408, 409, 413, 429 overloaded, 500, 501, 503 unavailable, 504 deadline",
                    "headers": {"x-request-id": {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": _ref("Error")}},
                }
            },
        },
    }


def route(services: Sequence[ServiceDescriptor]) -> Route:
    """The route of `GET /openapi.json`, its document built once here."""
    body = jsonbody.dump(document(services))

    async def openapi(request: Request) -> Response:
        return Response(body)

    return Route("GET", PATH, openapi, "OpenAPI", probe=True)
