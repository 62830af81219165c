"""What the HTTP edge routes on: requests, responses, path templates and the route table.

Path templates use the `google.api.http` syntax, so the hand-written Open Inference Protocol
routes and the routes transcoded from proto annotations share one matcher:
`/v1/models/{model}:predict`, `/v1/{name=models/*}`, `/files/**`.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

JSON = "application/json"


class HttpError(Exception):
    """An error that exists only on HTTP (no route, wrong method, limits of the HTTP reader);
    router errors (router.errors) are mapped to statuses in router.http.server."""

    def __init__(self, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = tuple(headers)


@dataclass(slots=True)
class Request:
    """One HTTP request, read whole."""

    method: str
    # the path as sent (still percent-encoded), without the query string
    path: str
    query: str
    # lower-case header names; repeated headers joined with ", "
    headers: dict[str, str]
    body: bytes
    # path template variables (percent-decoded), filled in by Router.match
    params: dict[str, str] = field(default_factory=dict)
    # seconds the caller gives the call (the grpc-timeout header), None for the default
    timeout: float | None = None

    def query_params(self) -> list[tuple[str, str]]:
        """The query string as (name, value) pairs, in order, percent-decoded."""
        if not self.query:
            return []
        return urllib.parse.parse_qsl(self.query, keep_blank_values=True)


@dataclass(slots=True)
class Response:
    """One HTTP response. A body given as several parts is written without joining them."""

    body: bytes | Sequence[bytes] = b""
    status: int = 200
    content_type: str = JSON
    headers: Sequence[tuple[str, str]] = ()


def json_response(obj: Any, status: int = 200, headers: Sequence[tuple[str, str]] = ()) -> Response:
    """A JSON response (compact, UTF-8)."""
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, status, JSON, headers)


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    """One method and path template, its handler, and how calls to it are counted."""

    method: str
    template: str
    handler: Handler
    # the API method name in metrics and logs (e.g. ModelInfer, Predict)
    name: str
    # health and metadata: answered while the router drains, outside the in-flight limit
    probe: bool = False


class Template:
    """A compiled `google.api.http` path template.

    Template = "/" Segments [ Verb ] ;  Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;  Verb = ":" LITERAL ;
    """

    def __init__(self, template: str) -> None:
        if not template.startswith("/"):
            raise ValueError(f"path template {template!r} must start with '/'")
        self.template = template
        # field paths of the variables, in order (e.g. "model", "name")
        self.fields: list[str] = []
        body, verb = template[1:], ""
        depth, cut = 0, -1
        for i, ch in enumerate(body):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == ":" and depth == 0:
                cut = i
        if depth != 0:
            raise ValueError(f"path template {template!r}: unbalanced braces")
        if cut >= 0:
            body, verb = body[:cut], body[cut + 1 :]
        pattern = "^/" + self._segments(body, inside=False)
        if verb:
            pattern += ":" + re.escape(verb)
        self._regex = re.compile(pattern + "$")

    def _segments(self, text: str, inside: bool) -> str:
        parts, depth, start = [], 0, 0
        for i, ch in enumerate(text + "/"):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "/" and depth == 0:
                parts.append(text[start:i])
                start = i + 1
        out = []
        for seg in parts:
            if seg == "*":
                out.append("[^/]+")
            elif seg == "**":
                out.append(".+")
            elif seg.startswith("{") and seg.endswith("}"):
                if inside:
                    raise ValueError(f"path template {self.template!r}: nested variable")
                name, _, sub = seg[1:-1].partition("=")
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name):
                    raise ValueError(f"path template {self.template!r}: bad variable {name!r}")
                group = f"v{len(self.fields)}"
                self.fields.append(name)
                out.append(f"(?P<{group}>{self._segments(sub, inside=True) if sub else '[^/]+'})")
            elif not seg or any(c in seg for c in "{}*"):
                raise ValueError(f"path template {self.template!r}: bad segment {seg!r}")
            else:
                out.append(re.escape(seg))
        return "/".join(out)

    def match(self, path: str) -> dict[str, str] | None:
        """The variables of a matching (percent-encoded) path, decoded; None when it differs."""
        m = self._regex.match(path)
        if m is None:
            return None
        values = {}
        for i, name in enumerate(self.fields):
            raw = m.group(f"v{i}")
            # a multi-segment variable keeps its slashes; %2F inside a segment stays a character
            values[name] = "/".join(urllib.parse.unquote(p) for p in raw.split("/"))
        return values


class Router:
    """The route table: the first route whose template matches the path and method wins."""

    def __init__(self) -> None:
        self._routes: list[tuple[Route, Template]] = []

    def add(self, route: Route) -> None:
        """Adds a route; a method and template pair given twice is an error."""
        for existing, _ in self._routes:
            if existing.method == route.method and existing.template == route.template:
                raise ValueError(f"route {route.method} {route.template} is defined twice")
        self._routes.append((route, Template(route.template)))

    @property
    def routes(self) -> list[Route]:
        """Every route, in match order."""
        return [r for r, _ in self._routes]

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route and path variables for a request; HttpError 404 or 405 when none fits."""
        allowed: list[str] = []
        for route, template in self._routes:
            params = template.match(path)
            if params is None:
                continue
            if route.method == method:
                return route, params
            allowed.append(route.method)
        if allowed:
            methods = ", ".join(sorted(set(allowed)))
            raise HttpError(405, f"{method} is not allowed on {path}; use {methods}", [("allow", methods)])
        raise HttpError(404, f"no route for {method} {path}")
