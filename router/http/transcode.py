"""HTTP/JSON transcoding of tensorgate's gRPC services from their `google.api.http` annotations.

Generic, as grpc-gateway and Envoy's gRPC-JSON transcoder do it: every method with an HttpRule
(and each of its additional_bindings) becomes one Route, with no code per method. A request
message is built from

- the path variables, which set their (possibly dotted) fields;
- the body: `body: "*"` is the whole message, `body: "field"` that one field; a path variable's
  field that the body also gives must hold the same value;
- the query string, for the fields neither the path nor the body binds: `?name=wine`, repeated
  fields by repeating the parameter, nested messages by dotted names (`?backend.kind=triton`),
  values by the proto3 JSON rules (numbers, enum names, `true`/`false`, base64 for bytes;
  URL-safe base64 or %2B in a query string, where `+` means a space). With `body: "*"` the body
  carries every field, so any query parameter is an error.

A binding without a body mapping (GET and DELETE here) rejects a non-empty body with 400 rather
than ignoring it, so a client never believes fields it sent were used.

The JSON is checked against the message descriptors before `json_format.ParseDict` converts it,
so every client mistake is InvalidInput naming the field's path (`items[0].image.data: not valid
base64`): unknown fields, wrong JSON types, integers out of range, two members of one oneof, and
bytes that are not base64 (json_format silently skips characters outside the alphabet). The
answer is the response message (or its `response_body` field) in proto3 JSON: lowerCamelCase
names, fields with default values included, int64 as strings, bytes as base64.

The servicer's plain method (`__wrapped__`, under the `@unary` wrapper of router.grpc.calls) is
called: router.http.server.HttpServer.dispatch already does what the wrapper does for gRPC
(request id, in-flight limit, error mapping, metrics). It gets an HttpServicerContext. Requests
and answers of OFFLOAD_BYTES or more are translated in a worker thread, so megabytes of JSON and
base64 do not stall the event loop for every other call.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.api import annotations_pb2, http_pb2
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from router import errors
from router.config import HttpSettings
from router.grpc.calls import STATUS as GRPC_STATUS
from router.http import jsonbody
from router.http.routes import Request, Response, Route, Template

# ---------------------------------------------------------------------------------------------
# Bindings: what the annotations say


@dataclass(frozen=True, slots=True)
class Binding:
    """One HTTP binding of one gRPC method: an HttpRule or one of its additional_bindings."""

    service: ServiceDescriptor
    method: MethodDescriptor
    # GET, POST, PUT, PATCH, DELETE or a custom verb, upper case
    verb: str
    template: str
    # "" (no body), "*" (the whole request message) or a field name of the request
    body: str
    # "" (the whole response message) or a field name of the response
    response_body: str
    # 0 for the rule itself, 1.. for its additional_bindings in order
    index: int


def _rule_verb_path(rule: http_pb2.HttpRule, where: str) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise ValueError(f"{where}: google.api.http rule without a pattern (get, post, ...)")
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    return kind.upper(), getattr(rule, kind)


def bindings(services: Iterable[ServiceDescriptor]) -> list[Binding]:
    """Every HTTP binding of every annotated unary method of the services, in declaration order
    (streaming methods are not transcoded)."""
    out: list[Binding] = []
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            if method.client_streaming or method.server_streaming:
                continue
            rule = options.Extensions[annotations_pb2.http]
            where = f"{service.full_name}/{method.name}"
            for index, r in enumerate([rule, *rule.additional_bindings]):
                if index and r.additional_bindings:
                    raise ValueError(f"{where}: additional_bindings may not nest")
                verb, path = _rule_verb_path(r, where)
                out.append(Binding(service, method, verb, path, r.body, r.response_body, index))
    return out


# ---------------------------------------------------------------------------------------------
# Checking proto3 JSON against a descriptor


class _Bad(Exception):
    """A JSON value that does not fit its field: where (a field path) and what is wrong."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem


Check = Callable[[Any, str], None]

_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1, "int32"),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1, "uint32"),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1, "int64"),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1, "uint64"),
}
_FLOAT32_MAX = 3.4028234663852886e38
_INT_TEXT = re.compile(r"-?[0-9]+")
_NUMBER_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_SPECIAL_FLOATS = frozenset(["NaN", "Infinity", "-Infinity"])
_URL_TO_STD = bytes.maketrans(b"-_", b"+/")
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_WRAPPERS = frozenset(
    f"google.protobuf.{n}Value"
    for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
# well-known types whose JSON is a string in a format json_format checks
_STRING_WKTS = frozenset(
    ["google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"]
)


def _kind(value: object) -> str:
    """The JSON type of a parsed value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" if len(value) <= 40 else "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def check_base64(value: object, path: str) -> None:
    """_Bad unless value is proto3 JSON base64: the standard or URL-safe alphabet (not mixed),
    padding optional but correct when given."""
    if not isinstance(value, str):
        raise _Bad(path, f"expected a base64 string, got {_kind(value)}")
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        raise _Bad(path, "not valid base64: it holds non-ASCII characters") from None
    if b"-" in raw or b"_" in raw:
        if b"+" in raw or b"/" in raw:
            raise _Bad(path, "not valid base64: it mixes the standard (+/) and URL-safe (-_) alphabets")
        raw = raw.translate(_URL_TO_STD)
    rest = raw.translate(None, _BASE64_ALPHABET)
    if rest:
        raise _Bad(path, f"not valid base64: {chr(rest[0])!r} is not in the base64 alphabet")
    data = raw.rstrip(b"=")
    if b"=" in data:
        raise _Bad(path, "not valid base64: '=' inside the text (padding goes only at the end)")
    n, padding = len(data), len(raw) - len(data)
    if n % 4 == 1:
        raise _Bad(path, f"not valid base64: a length of {n} (padding aside) cannot encode whole bytes")
    if padding and padding != -n % 4:
        raise _Bad(
            path, f"not valid base64: {n} characters take {-n % 4} '=' of padding or none, not {padding}"
        )


def _int_check(cpp_type: int) -> Check:
    lo, hi, what = _INT_RANGES[cpp_type]

    def check(value: Any, path: str) -> None:
        kind = type(value)
        if kind is int:
            n = value
        elif kind is float:
            if not value.is_integer():
                raise _Bad(path, f"expected an integer ({what}), got {value!r}")
            n = int(value)
        elif kind is str:
            if _INT_TEXT.fullmatch(value):
                n = int(value)
            elif _NUMBER_TEXT.fullmatch(value) and float(value).is_integer():
                n = int(float(value))
            else:
                raise _Bad(path, f"expected an integer ({what}), got {_kind(value)}")
        else:
            raise _Bad(path, f"expected an integer ({what}) as a number or string, got {_kind(value)}")
        if not lo <= n <= hi:
            raise _Bad(path, f"{n} is out of range for {what}")

    return check


def _float_check(cpp_type: int) -> Check:
    single = cpp_type == FieldDescriptor.CPPTYPE_FLOAT
    what = "float" if single else "double"

    def check(value: Any, path: str) -> None:
        kind = type(value)
        if kind is int or kind is float:
            if math.isnan(value) or math.isinf(value):
                raise _Bad(path, f'{value!r}: write "NaN", "Infinity" or "-Infinity" as a string')
            if single and abs(value) > _FLOAT32_MAX:
                raise _Bad(path, f"{value!r} is out of range for float")
        elif kind is str:
            if value not in _SPECIAL_FLOATS and not _NUMBER_TEXT.fullmatch(value):
                raise _Bad(path, f"expected a number ({what}), got {_kind(value)}")
        else:
            raise _Bad(path, f"expected a number ({what}), got {_kind(value)}")

    return check


def _bool_check(value: Any, path: str) -> None:
    if type(value) is not bool:
        raise _Bad(path, f"expected true or false, got {_kind(value)}")


def _string_check(value: Any, path: str) -> None:
    if type(value) is not str:
        raise _Bad(path, f"expected a string, got {_kind(value)}")


def _any_check(value: Any, path: str) -> None:
    """google.protobuf.Value: any JSON."""


def _list_check(value: Any, path: str) -> None:
    if not isinstance(value, list):
        raise _Bad(path, f"expected an array, got {_kind(value)}")


def _enum_check(field: FieldDescriptor) -> Check:
    enum = field.enum_type
    names = frozenset(enum.values_by_name)
    numbers = frozenset(enum.values_by_number)

    def check(value: Any, path: str) -> None:
        if type(value) is str and value in names:
            return
        if type(value) is int and (value in numbers or not enum.is_closed) and -(2**31) <= value < 2**31:
            return
        raise _Bad(path, f"expected one of {', '.join(sorted(names))} (enum {enum.name}), got {_kind(value)}")

    return check


class _MessageCheck:
    """Checks the JSON of one message type: field names, JSON types, oneofs, nested values."""

    def __init__(self, desc: Descriptor) -> None:
        self.desc = desc
        # JSON name and proto name -> (field name, oneof name or "", check of the field's value)
        self.fields: dict[str, tuple[str, str, Check]] = {}
        self.names = ", ".join(f.json_name for f in desc.fields)

    def build(self) -> None:
        for f in self.desc.fields:
            oneof = f.containing_oneof
            group = oneof.name if oneof is not None and len(oneof.fields) > 1 else ""
            entry = (f.name, group, _field_check(f))
            self.fields[f.json_name] = entry
            self.fields[f.name] = entry

    def __call__(self, value: Any, path: str) -> None:
        if type(value) is not dict:
            raise _Bad(path, f"expected an object ({self.desc.name}), got {_kind(value)}")
        fields = self.fields
        seen: dict[str, str] = {}
        for key, item in value.items():
            entry = fields.get(key)
            where = _join(path, key)
            if entry is None:
                raise _Bad(where, f"unknown field; {self.desc.name} has {self.names or 'no fields'}")
            name, group, check = entry
            if name in seen:
                raise _Bad(where, f"the field is given twice, as {seen[name]} and {key}")
            seen[name] = key
            if item is None:  # null: the field's default
                continue
            if group:
                other = seen.get("(oneof)" + group)
                if other is not None:
                    members = ", ".join(f.json_name for f in self.desc.oneofs_by_name[group].fields)
                    raise _Bad(
                        path or "the body",
                        f"{other} and {key} are both set; give at most one of {members} (oneof {group})",
                    )
                seen["(oneof)" + group] = key
            check(item, where)


_MESSAGE_CHECKS: dict[str, Check] = {}


def _message_check(desc: Descriptor) -> Check:
    """The check of a message type's JSON, made once per type (recursive types included)."""
    found = _MESSAGE_CHECKS.get(desc.full_name)
    if found is not None:
        return found
    name = desc.full_name
    check: Check
    if name in _WRAPPERS:
        check = _scalar_check(desc.fields_by_name["value"])
    elif name in _STRING_WKTS:
        check = _string_check
    elif name == "google.protobuf.Value":
        check = _any_check
    elif name == "google.protobuf.ListValue":
        check = _list_check
    elif name in ("google.protobuf.Struct", "google.protobuf.Any"):
        what = desc.name

        def check(value: Any, path: str) -> None:  # contents: json_format checks them
            if type(value) is not dict:
                raise _Bad(path, f"expected an object ({what}), got {_kind(value)}")

    else:
        message = _MessageCheck(desc)
        _MESSAGE_CHECKS[name] = message  # before build(): a recursive type finds itself
        message.build()
        return message
    _MESSAGE_CHECKS[name] = check
    return check


def _scalar_check(field: FieldDescriptor) -> Check:
    """The check of one value of a field (an element of it, when repeated)."""
    cpp = field.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_MESSAGE:
        desc = field.message_type

        def nested(value: Any, path: str) -> None:
            _message_check(desc)(value, path)

        return nested
    if cpp in _INT_RANGES:
        return _int_check(cpp)
    if cpp in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
        return _float_check(cpp)
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return _bool_check
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        return _enum_check(field)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return check_base64
    return _string_check


def _map_key_check(field: FieldDescriptor) -> Check:
    cpp = field.cpp_type
    if cpp in _INT_RANGES:
        return _int_check(cpp)
    if cpp == FieldDescriptor.CPPTYPE_BOOL:

        def check(value: Any, path: str) -> None:
            if value not in ("true", "false"):
                raise _Bad(path, f'a map key of type bool must be "true" or "false", got {value!r}')

        return check
    return _string_check


def is_map(field: FieldDescriptor) -> bool:
    return (
        field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE
        and field.is_repeated
        and field.message_type.GetOptions().map_entry
    )


def _field_check(field: FieldDescriptor) -> Check:
    """The check of a field's whole JSON value (an array when repeated, an object for maps)."""
    if is_map(field):
        key_check = _map_key_check(field.message_type.fields_by_name["key"])
        value_check = _scalar_check(field.message_type.fields_by_name["value"])

        def map_check(value: Any, path: str) -> None:
            if type(value) is not dict:
                raise _Bad(path, f"expected an object (a map), got {_kind(value)}")
            for k, v in value.items():
                where = f"{path}[{json.dumps(k, ensure_ascii=False)}]"
                key_check(k, where)
                if v is None:
                    raise _Bad(where, "null is not a map value")
                value_check(v, where)

        return map_check
    element = _scalar_check(field)
    if not field.is_repeated:
        return element

    def repeated_check(value: Any, path: str) -> None:
        if type(value) is not list:
            raise _Bad(path, f"expected an array, got {_kind(value)}")
        for i, v in enumerate(value):
            where = f"{path}[{i}]"
            if v is None:
                raise _Bad(where, "null is not an array element")
            element(v, where)

    return repeated_check


_PARSE_PREFIX = re.compile(r"^(Failed to parse \w+ field: )+")
_PARSE_AT = re.compile(r'^(.*?)\.? at "?[A-Za-z_][A-Za-z0-9_]*\.?([^" ]*)"?$')


def _parse_error(e: json_format.ParseError, what: str) -> errors.InvalidInput:
    """json_format's message made readable, naming the field when it says where: for what the
    checks above let through (Timestamp and Duration formats, unpaired surrogates, ...)."""
    text = _PARSE_PREFIX.sub("", str(e)).split("\n")[0].rstrip(".")
    m = _PARSE_AT.match(text)
    if m is not None and m.group(2):
        return errors.InvalidInput(f"{m.group(2)}: {m.group(1)}")
    return errors.InvalidInput(f"{what}: {text}")


# ---------------------------------------------------------------------------------------------
# Requests: path, body and query string -> request message


_FIELD_NAMES: dict[str, dict[str, FieldDescriptor]] = {}
_ELEMENT_CHECKS: dict[str, Check] = {}


def _field_names(desc: Descriptor) -> dict[str, FieldDescriptor]:
    """A message's fields by JSON name and by proto name."""
    found = _FIELD_NAMES.get(desc.full_name)
    if found is None:
        found = {f.name: f for f in desc.fields}
        found.update({f.json_name: f for f in desc.fields})
        _FIELD_NAMES[desc.full_name] = found
    return found


def _element_check(field: FieldDescriptor) -> Check:
    """The check of one value of a field, made once per field."""
    found = _ELEMENT_CHECKS.get(field.full_name)
    if found is None:
        found = _ELEMENT_CHECKS[field.full_name] = _scalar_check(field)
    return found


def is_scalar_leaf(field: FieldDescriptor) -> bool:
    """A field a path variable or query parameter can set: a scalar, an enum, or a well-known
    type written as one JSON scalar (wrappers, Timestamp, Duration, FieldMask)."""
    if field.cpp_type != FieldDescriptor.CPPTYPE_MESSAGE:
        return True
    name = field.message_type.full_name
    return name in _WRAPPERS or name in _STRING_WKTS


def _text_value(field: FieldDescriptor, text: str, path: str) -> Any:
    """The JSON value of a path or query text for a scalar field (proto3 JSON takes numbers and
    enums as strings; booleans are converted here)."""
    target = field
    if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE and field.message_type.full_name in _WRAPPERS:
        target = field.message_type.fields_by_name["value"]
    if target.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        if text not in ("true", "false"):
            raise _Bad(path, f"expected true or false, got {text!r}")
        return text == "true"
    return text


def _set_path(tree: dict[str, Any], names: Sequence[str], value: Any) -> None:
    for name in names[:-1]:
        tree = tree.setdefault(name, {})
    tree[names[-1]] = value


def _get_path(tree: Any, segments: Sequence[tuple[str, str]]) -> Any:
    """The JSON value at a field path (each segment by proto or JSON name); None when absent."""
    for name, json_name in segments:
        if type(tree) is not dict:
            return None
        tree = tree.get(json_name, tree.get(name))
    return tree


@dataclass(frozen=True, slots=True)
class _PathField:
    """A path variable and the field it sets."""

    variable: str
    # the field path: (proto name, JSON name) per segment
    segments: tuple[tuple[str, str], ...]
    names: tuple[str, ...]
    field: FieldDescriptor
    check: Check


class Transcoder:
    """One Binding's translation: HTTP request -> request message, response message -> HTTP."""

    def __init__(self, binding: Binding, settings: HttpSettings) -> None:
        self.binding = binding
        self.max_depth = settings.max_json_depth
        method = binding.method
        where = f"{method.full_name} ({binding.verb} {binding.template})"
        self.request_class: type[Message] = message_factory.GetMessageClass(method.input_type)
        self.response_class: type[Message] = message_factory.GetMessageClass(method.output_type)
        desc = method.input_type
        self.check = _message_check(desc)
        self.path_fields = tuple(self._path_field(desc, v, where) for v in Template(binding.template).fields)
        # the body: "" none, "*" the whole message, or one field (wrapped as {field: body})
        self.body_field = ""
        if binding.body not in ("", "*"):
            f = desc.fields_by_name.get(binding.body)
            if f is None:
                raise ValueError(f"{where}: body {binding.body!r} is not a field of {desc.name}")
            self.body_field = f.name
        # fields the query string may not set: bound by the path or the body
        self.bound = {p.names for p in self.path_fields}
        if self.body_field:
            self.bound.add((self.body_field,))
        # the response: the whole message or one field
        self.response_field: FieldDescriptor | None = None
        if binding.response_body:
            rf = method.output_type.fields_by_name.get(binding.response_body)
            if rf is None:
                raise ValueError(f"{where}: response_body {binding.response_body!r} is not a field")
            self.response_field = rf

    @staticmethod
    def _path_field(desc: Descriptor, variable: str, where: str) -> _PathField:
        segments = []
        field: FieldDescriptor | None = None
        for name in variable.split("."):
            if field is not None:
                if field.cpp_type != FieldDescriptor.CPPTYPE_MESSAGE or field.is_repeated:
                    raise ValueError(f"{where}: path variable {variable!r}: {field.name} is not a message")
                desc = field.message_type
            found = desc.fields_by_name.get(name)
            if found is None:
                raise ValueError(f"{where}: path variable {variable!r}: {desc.name} has no field {name}")
            field = found
            segments.append((found.name, found.json_name))
        assert field is not None
        if field.is_repeated or not is_scalar_leaf(field):
            raise ValueError(f"{where}: path variable {variable!r} must name a singular scalar field")
        names = tuple(n for n, _ in segments)
        return _PathField(variable, tuple(segments), names, field, _element_check(field))

    def _query_field(self, name: str) -> tuple[list[str], FieldDescriptor]:
        """The field path (proto names) and leaf field a query parameter sets; _Bad when none."""
        desc = self.binding.method.input_type
        where = f"query parameter {name}"
        if self.binding.body == "*":
            raise _Bad(where, 'the body carries every field of this call (body: "*"); move it into the body')
        parts = name.split(".")
        proto_path: list[str] = []
        field: FieldDescriptor | None = None
        for part in parts:
            if field is not None:
                if field.cpp_type != FieldDescriptor.CPPTYPE_MESSAGE or field.is_repeated or is_map(field):
                    raise _Bad(where, f"{field.name} has no fields to set with a dotted name")
                desc = field.message_type
            field = _field_names(desc).get(part)
            if field is None:
                names = ", ".join(f.json_name for f in desc.fields)
                raise _Bad(where, f"names no field; {desc.name} has {names or 'no fields'}")
            proto_path.append(field.name)
            if tuple(proto_path) in self.bound:
                source = "the body" if proto_path == [self.body_field] else "the path"
                raise _Bad(where, f"{'.'.join(proto_path)} is set by {source}")
        assert field is not None
        if is_map(field):
            raise _Bad(where, "map fields cannot be set from the query string; use a body")
        if not is_scalar_leaf(field):
            raise _Bad(where, f"{field.name} is a message; set its fields as {name}.FIELD=...")
        return proto_path, field

    def request(self, request: Request) -> Message:
        """The request message of an HTTP request; InvalidInput naming the field when a part of
        it does not fit."""
        binding = self.binding
        body = request.body
        tree: Any = {}
        if binding.body:
            if body and not body.isspace():
                parsed = jsonbody.load(body, self.max_depth)
                tree = {self.body_field: parsed} if self.body_field else parsed
        elif body and not body.isspace():
            raise errors.InvalidInput(
                f"{binding.verb} {binding.template} takes no body; "
                "send the fields in the path and query string"
            )
        try:
            self.check(tree, "")
        except _Bad as e:
            raise errors.InvalidInput(f"{e.path or 'the body'}: {e.problem}") from None

        path_tree: dict[str, Any] = {}
        for pf in self.path_fields:
            text = request.params[pf.variable]
            try:
                value = _text_value(pf.field, text, pf.variable)
                pf.check(value, pf.variable)
            except _Bad as e:
                raise errors.InvalidInput(f"path variable {pf.variable}: {e.problem}") from None
            _set_path(path_tree, pf.names, value)

        query_tree: dict[str, Any] = {}
        if request.query:
            query_tree = self._query(request.query_params())

        message = self.request_class()
        try:
            json_format.ParseDict(tree, message, ignore_unknown_fields=False)
        except json_format.ParseError as e:
            raise _parse_error(e, "the body") from None
        if path_tree:
            self._agree(tree, path_tree, message)
            try:
                json_format.ParseDict(path_tree, message, ignore_unknown_fields=False)
            except json_format.ParseError as e:
                raise _parse_error(e, "a path variable") from None
        if query_tree:
            try:
                json_format.ParseDict(query_tree, message, ignore_unknown_fields=False)
            except json_format.ParseError as e:
                raise _parse_error(e, "the query string") from None
        return message

    def _query(self, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        """The JSON tree (by proto names) of the query parameters."""
        tree: dict[str, Any] = {}
        given: set[tuple[str, ...]] = set()
        try:
            for name, text in pairs:
                where = f"query parameter {name}"
                names, field = self._query_field(name)
                value = _text_value(field, text, where)
                _element_check(field)(value, where)
                if field.is_repeated:
                    node = tree
                    for part in names[:-1]:
                        node = node.setdefault(part, {})
                    node.setdefault(names[-1], []).append(value)
                else:
                    key = tuple(names)
                    if key in given:
                        raise _Bad(where, "is given more than once; it is not repeated")
                    given.add(key)
                    _set_path(tree, names, value)
            self.check(tree, "")  # what spans parameters: two members of one oneof
        except _Bad as e:
            if e.path.startswith("query parameter"):
                raise errors.InvalidInput(f"{e.path}: {e.problem}") from None
            where = f"query parameter {e.path}" if e.path else "the query string"
            raise errors.InvalidInput(f"{where}: {e.problem}") from None
        return tree

    def _agree(self, body: Any, path_tree: dict[str, Any], message: Message) -> None:
        """InvalidInput when the body gives a path variable's field another value."""
        for pf in self.path_fields:
            if _get_path(body, pf.segments) is None:
                continue
            from_path = self.request_class()
            json_format.ParseDict(path_tree, from_path)
            a: Any = message
            b: Any = from_path
            for name, _ in pf.segments:
                a, b = getattr(a, name), getattr(b, name)
            if a != b:
                raise errors.InvalidInput(
                    f"{pf.variable}: the path says {b!r} but the body says {a!r}; they must agree"
                )

    def response(self, message: Message | bytes) -> Response:
        """The HTTP response of a response message (or of its serialized bytes)."""
        if isinstance(message, bytes | bytearray):
            message = self.response_class.FromString(bytes(message))
        field = self.response_field
        if field is None:
            return Response(jsonbody.dump(_to_json(message)))
        if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE and not field.is_repeated:
            return Response(jsonbody.dump(_to_json(getattr(message, field.name))))
        return Response(jsonbody.dump(_to_json(message)[field.json_name]))


def _to_json(message: Message) -> Any:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


# ---------------------------------------------------------------------------------------------
# Calling the servicer


# gRPC status codes -> router errors (the first class mapped to a code wins)
_ERRORS: dict[grpc.StatusCode, type[errors.TensorgateError]] = {}
for _cls, _code in GRPC_STATUS.items():
    _ERRORS.setdefault(_code, _cls)


def error_for(code: grpc.StatusCode, details: str) -> errors.TensorgateError:
    """The router error of a gRPC status a servicer set (a base TensorgateError, hence 500, for
    codes router.errors does not name)."""
    cls = _ERRORS.get(code, errors.TensorgateError)
    return cls(details or f"the call failed with {code.name}")


class HttpServicerContext:
    """What a servicer method sees of its call when served over HTTP: the parts of
    grpc.aio.ServicerContext that make sense there.

    - time_remaining(): seconds left of the grpc-timeout header's deadline, None without one;
    - invocation_metadata(): the HTTP request headers (lower-case names) as metadata pairs;
    - set_trailing_metadata / send_initial_metadata: ignored (the request id goes out as the
      x-request-id header already);
    - set_code / set_details: kept; a code other than OK makes the call fail with its router
      error after the method returns, as on gRPC;
    - abort(code, details): raises the router error of the code (InvalidInput for
      INVALID_ARGUMENT, ...);
    - peer(): "http"; cancelled() and done(): False (a client that leaves cancels the task).
    """

    __slots__ = ("_code", "_deadline", "_details", "_headers")

    def __init__(self, request: Request) -> None:
        self._deadline = None if request.timeout is None else time.monotonic() + request.timeout
        self._headers = request.headers
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline; None when the caller set none."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        """The HTTP request headers as (name, value) pairs."""
        return tuple(self._headers.items())

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        """Ignored on HTTP."""

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        """Ignored on HTTP."""

    def set_code(self, code: grpc.StatusCode) -> None:
        """The call's status; not OK fails the call once the method returns."""
        self._code = code

    def set_details(self, details: str) -> None:
        """The message of a failing status set with set_code."""
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        """The status set with set_code, if any."""
        return self._code

    def details(self) -> str:
        """The details set with set_details."""
        return self._details

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        """Ends the call with the router error of a gRPC status."""
        raise error_for(code, details)

    def peer(self) -> str:
        """The transport, as the peer is not known here."""
        return "http"

    def cancelled(self) -> bool:
        """False: a client that goes away cancels the serving task instead."""
        return False

    def done(self) -> bool:
        """False while the method runs."""
        return False

    def failure(self) -> errors.TensorgateError | None:
        """The error of a status set with set_code, None when it is unset or OK."""
        if self._code is None or self._code == grpc.StatusCode.OK:
            return None
        return error_for(self._code, self._details)


# Requests and responses this large are translated in a worker thread, off the event loop.
OFFLOAD_BYTES = jsonbody.OFFLOAD_BYTES

Plain = Callable[[Any, Message, HttpServicerContext], Awaitable[Any]]


def plain_method(servicer: object, name: str) -> Plain | None:
    """The servicer's method under its `@unary` wrapper; None when it has no async
    implementation (the generated base class's stub)."""
    method = getattr(type(servicer), name, None)
    plain = getattr(method, "__wrapped__", method)
    if plain is None or not inspect.iscoroutinefunction(plain):
        return None
    return plain  # type: ignore[no-any-return]


def _handler(transcoder: Transcoder, servicer: object) -> Callable[[Request], Awaitable[Response]]:
    method = transcoder.binding.method
    plain = plain_method(servicer, method.name)
    if plain is None:

        async def unimplemented(request: Request) -> Response:
            raise errors.Unimplemented(f"{method.full_name} is not implemented by this router")

        return unimplemented
    build, answer = transcoder.request, transcoder.response

    async def handle(request: Request) -> Response:
        ctx = HttpServicerContext(request)
        if len(request.body) < OFFLOAD_BYTES:
            message = build(request)
        else:  # megabytes of JSON and base64 take a while: let other requests in meanwhile
            message = await asyncio.to_thread(build, request)
        result = await plain(servicer, message, ctx)
        failed = ctx.failure()
        if failed is not None:
            raise failed
        if isinstance(result, Message) and result.ByteSize() >= OFFLOAD_BYTES:
            return await asyncio.to_thread(answer, result)
        return answer(result)

    return handle


def routes(services: Sequence[tuple[ServiceDescriptor, Any]], settings: HttpSettings) -> list[Route]:
    """One Route per HTTP binding of every annotated method of the services (each a
    (ServiceDescriptor, servicer) pair), named after the method."""
    servicers = {service.full_name: servicer for service, servicer in services}
    out = []
    for binding in bindings(service for service, _ in services):
        transcoder = Transcoder(binding, settings)
        handler = _handler(transcoder, servicers[binding.service.full_name])
        out.append(Route(binding.verb, binding.template, handler, binding.method.name, probe=False))
    return out
