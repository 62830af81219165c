"""The `tensorgate` command: serve, manage the registry, call a model, show the settings keys."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from router import config
from router.errors import TensorgateError


def _settings(args: argparse.Namespace, **overrides: Any) -> config.Settings:
    """Settings from --config, the environment and the flags given."""
    if getattr(args, "registry", None):
        overrides["registry.path"] = args.registry
    return config.load(args.config, overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    """Runs the router until SIGTERM or Ctrl-C."""
    from router import app, logs

    settings = _settings(
        args,
        **{
            "server.host": args.host,
            "server.grpc_port": args.grpc_port,
            "server.http_port": args.http_port,
            "server.metrics_port": args.metrics_port,
            "log.level": args.log_level,
            "log.access": True if args.access_log else None,
        },
    )
    logs.setup(settings.log.level, settings.log.access)
    app.serve(settings)
    return 0


def _admin(args: argparse.Namespace) -> Any:
    from adapters.base import BackendOptions, default_pool
    from router.admin import RegistryAdmin
    from router.registry import RegistryStore

    settings = _settings(args)
    options = BackendOptions(control_timeout_s=settings.backend.control_timeout_s)
    return RegistryAdmin(
        RegistryStore(settings.registry.path), default_pool(options),
        limits=config.transform_limits(settings),
    )


def _record_row(r: Any) -> str:
    inputs = ", ".join(f"{t.name}:{t.datatype}{list(t.shape)}" for t in r.inputs)
    outputs = ", ".join(f"{t.name}:{t.datatype}{list(t.shape)}" for t in r.outputs)
    b = r.backend
    backend = f"{b.kind}:{b.model or r.name}" + (f":{b.version}" if b.version else "")
    return (f"{r.name}:{r.version}  {backend} @ {','.join(b.endpoints)}  "
            f"max_batch_size={r.max_batch_size}\n    in:  {inputs}\n    out: {outputs}")


def _actor(args: argparse.Namespace) -> str:
    """Who makes a registry change: --actor, else the login name."""
    if getattr(args, "actor", None):
        return str(args.actor)
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def cmd_models_register(args: argparse.Namespace) -> int:
    """Registers every model version in a YAML file, then sets its traffic policies."""
    from router import traffic
    from router.registry import parse_registration_file

    records, policies = parse_registration_file(config.load_yaml(args.file), args.file)
    admin = _admin(args)

    async def run() -> list[Any]:
        try:
            return list(await admin.register(records)) if records else []
        finally:
            await admin.backends.close()

    for r in asyncio.run(run()):
        print(f"registered {_record_row(r)}")
    for policy in policies:
        stored = admin.store.set_policy(policy, _actor(args))
        print(f"traffic {stored.model}: {traffic.summary(stored)}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    """Lists registered model versions."""
    from google.protobuf import json_format

    records = _admin(args).store.records(args.name or "")
    if args.json:
        print(json.dumps([json_format.MessageToDict(r) for r in records], indent=2))
    elif not records:
        print("no models registered")
    for r in records if not args.json else []:
        print(_record_row(r))
    return 0


def cmd_models_remove(args: argparse.Namespace) -> int:
    """Removes NAME (every version) or NAME:VERSION."""
    name, _, version = args.model.partition(":")
    for r in _admin(args).store.remove(name, version, _actor(args)):
        print(f"removed {r.name}:{r.version}")
    return 0


_NONE = ("", "none")  # a flag value that clears its field


def _pairs(flag: str, text: str) -> list[tuple[str, float]]:
    """V=N,V=N -> [(V, N), ...]; InvalidInput names the flag."""
    from router.errors import InvalidInput

    out = []
    for part in text.split(","):
        version, sep, number = part.strip().partition("=")
        try:
            if not sep or not version:
                raise ValueError
            out.append((version, float(number)))
        except ValueError:
            raise InvalidInput(f"{flag} {text!r}: expected VERSION=NUMBER[,VERSION=NUMBER...]") from None
    return out


def cmd_models_traffic(args: argparse.Namespace) -> int:
    """Shows a model's traffic policy, or changes the parts the flags give (one atomic change)."""
    from google.protobuf import json_format
    from tensorgate.v1 import registry_pb2

    from router import traffic

    store = _admin(args).store
    flags = (args.default, args.split, args.sticky_key, args.shadow, args.fallback)
    if not args.clear and all(f is None for f in flags):
        if not store.records(args.name):
            raise TensorgateError(f"model {args.name!r} is not registered")
        policy = store.policy(args.name)
    else:
        given = {k: getattr(args, k) for k in ("split", "shadow")}
        split, shadow = (
            None if v is None or v.lower() in _NONE else _pairs(f"--{k}", v) for k, v in given.items()
        )
        if shadow is not None and len(shadow) != 1:
            raise TensorgateError(f"--shadow {args.shadow!r}: expected one VERSION=FRACTION")

        def change(current: registry_pb2.TrafficPolicy) -> registry_pb2.TrafficPolicy:
            new = registry_pb2.TrafficPolicy(model=args.name)
            if not args.clear:
                new.CopyFrom(current)
            for value, field in ((args.default, "default_version"), (args.sticky_key, "sticky_key"),
                                 (args.fallback, "fallback_version")):
                if value is not None:
                    setattr(new, field, "" if value.lower() in _NONE else value)
            if args.split is not None:
                del new.split[:]
                for version, weight in split or []:
                    new.split.add(version=version, weight=weight)
            if args.shadow is not None:
                new.ClearField("shadow")
                if shadow:
                    new.shadow.version, new.shadow.fraction = shadow[0]
            return new

        action = "clear" if args.clear and all(f is None for f in flags) else "set"
        policy = store.change_policy(args.name, change, _actor(args), action)
    if args.json:
        print(json.dumps(json_format.MessageToDict(policy), indent=2))
    else:
        print(f"{args.name}: {traffic.summary(policy)}")
    return 0


def cmd_models_promote(args: argparse.Namespace) -> int:
    """Makes VERSION the default of NAME and clears its split and shadow."""
    from router import traffic

    policy = _admin(args).store.promote(args.name, args.version, _actor(args))
    print(f"{args.name}: {traffic.summary(policy)}")
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    """Restores the traffic policy NAME had before its last change."""
    from router import traffic

    policy = _admin(args).store.rollback(args.name, _actor(args))
    print(f"{args.name}: {traffic.summary(policy)}")
    return 0


def cmd_models_history(args: argparse.Namespace) -> int:
    """Prints every change of a model's traffic policy, oldest first."""
    from google.protobuf import json_format

    from router import traffic

    changes = _admin(args).store.history(args.name)
    if args.json:
        print(json.dumps([json_format.MessageToDict(c) for c in changes], indent=2))
        return 0
    if not changes:
        print(f"no traffic policy changes for {args.name}")
        return 0
    rows = [(c.time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC"), c.actor, c.action,
             traffic.summary(c.policy)) for c in changes]
    widths = [max(len(r[i]) for r in [("time", "actor", "action", ""), *rows]) for i in range(3)]
    print(f"{'time':{widths[0]}}  {'actor':{widths[1]}}  {'action':{widths[2]}}  policy")
    for row in rows:
        print(f"{row[0]:{widths[0]}}  {row[1]:{widths[1]}}  {row[2]:{widths[2]}}  {row[3]}")
    return 0


def _load_tensor(spec: str) -> Any:
    """NAME=FILE.npy -> a tensorgate.v1.Tensor."""
    import numpy as np
    from tensorgate.v1 import tensor_pb2

    from router.tensors import from_numpy

    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise TensorgateError(f"--tensor {spec!r}: expected NAME=FILE.npy")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise TensorgateError(f"--tensor {name}: cannot read {path} as .npy: {e}") from None
    datatype, shape, data = from_numpy(array)
    return tensor_pb2.Tensor(name=name, datatype=datatype, shape=shape, data=data)


def cmd_infer(args: argparse.Namespace) -> int:
    """Calls a model through tensorgate's Predict API and prints its outputs."""
    import grpc
    import numpy as np
    from tensorgate.v1 import inference_pb2, inference_pb2_grpc

    from router.tensors import to_numpy

    request = inference_pb2.PredictRequest(model=args.model, version=args.version or "")
    _add_items(request, args)
    request.outputs.extend(args.output or [])
    options = [("grpc.max_receive_message_length", 256 * 1024 * 1024),
               ("grpc.max_send_message_length", 256 * 1024 * 1024)]
    with grpc.insecure_channel(args.address, options=options) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=args.timeout)
        except grpc.RpcError as e:
            print(f"tensorgate: {e.code().name}: {e.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return 1
    results = [
        {t.name: (t, to_numpy(t.datatype, t.shape, t.data)) for t in result.outputs}
        for result in response.results
    ]
    if args.json:
        def plain(a: np.ndarray) -> Any:
            if a.dtype == object:
                return [x.decode("utf-8", "backslashreplace") for x in a.reshape(-1)]
            return a.reshape(-1).tolist()

        print(json.dumps({
            "model": response.model,
            "version": response.version,
            "request_id": response.request_id,
            "results": [
                {"outputs": {
                    name: {"datatype": t.datatype, "shape": list(t.shape), "data": plain(array)}
                    for name, (t, array) in outputs.items()
                }, "classifications": [
                    {"output": c.output, "row": c.row, "index": c.index, "label": c.label,
                     "score": c.score}
                    for c in result.classifications
                ]}
                for outputs, result in zip(results, response.results, strict=True)
            ],
        }))
    else:
        print(f"{response.model}:{response.version} (request id {response.request_id})")
        for i, outputs in enumerate(results):
            if len(results) > 1:
                print(f"items[{i}]:")
            for name, (t, array) in outputs.items():
                print(f"{name} {t.datatype}{list(t.shape)}:\n{np.array2string(array)}")
            for c in response.results[i].classifications:
                row = f" row {c.row}" if c.row else ""
                print(f"{c.output}{row}: {c.label or c.index} (class {c.index}) score {c.score:.4f}")
    return 0


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TensorgateError(f"{what} {path}: cannot read it: {e.strerror}") from None


def _add_items(request: Any, args: argparse.Namespace) -> None:
    """One item of tensors, or one item per --image / --text / --csv."""
    given = [k for k in ("tensor", "image", "text", "csv") if getattr(args, k)]
    if len(given) != 1:
        raise TensorgateError(
            "give exactly one kind of input: --tensor NAME=FILE.npy ..., --image FILE ..., "
            "--text STR ... or --csv FILE ..."
        )
    if args.tensor:
        request.items.add().tensors.tensors.extend(_load_tensor(t) for t in args.tensor)
    for path in args.image or []:
        request.items.add().image.data = _read(path, "--image")
    for text in args.text or []:
        request.items.add().text.text = text
    for path in args.csv or []:
        request.items.add().table.csv = _read(path, "--csv")


def cmd_config(args: argparse.Namespace) -> int:
    """Prints every settings key with its default and environment variable."""
    for key, default, kind in config.keys():
        section, _, name = key.partition(".")
        env = f"{config.ENV_PREFIX}{section.upper()}__{name.upper()}"
        print(f"{key:32} {kind:6} default {default!r:28} env {env}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="tensorgate", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", metavar="FILE", help="settings YAML file")
        sp.add_argument("--registry", metavar="PATH", help="registry database (registry.path)")
        return sp

    s = with_config(sub.add_parser("serve", help="run the router until SIGTERM or Ctrl-C"))
    s.add_argument("--host", help="address to listen on (server.host, default 127.0.0.1)")
    s.add_argument("--grpc-port", type=int, help="gRPC port (server.grpc_port, default 8500)")
    s.add_argument("--http-port", type=int,
                   help="HTTP port of the HTTP/JSON edge (server.http_port, default 8501)")
    s.add_argument("--metrics-port", type=int,
                   help="Prometheus port (server.metrics_port, default 8502)")
    s.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (log.level)")
    s.add_argument("--access-log", action="store_true", help="log one line per call (log.access)")
    s.set_defaults(func=cmd_serve)

    m = sub.add_parser("models", help="manage the model registry").add_subparsers(
        dest="models_command", required=True
    )
    def with_actor(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--actor", help="who makes the change, for the history (default: $USER)")
        return sp

    r = with_actor(with_config(m.add_parser(
        "register", help="register the model versions (and traffic policies) in a YAML file")))
    r.add_argument("file", metavar="FILE")
    r.set_defaults(func=cmd_models_register)
    ls = with_config(m.add_parser("list", help="list registered model versions"))
    ls.add_argument("name", nargs="?", help="only this model")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_models_list)
    rm = with_actor(with_config(m.add_parser("remove", help="remove NAME (all versions) or NAME:VERSION")))
    rm.add_argument("model", metavar="NAME[:VERSION]")
    rm.set_defaults(func=cmd_models_remove)
    t = with_actor(with_config(m.add_parser(
        "traffic", help="show a model's traffic policy, or change the parts given (none clears one)")))
    t.add_argument("name", metavar="NAME")
    t.add_argument("--default", metavar="V", help="the version served when nothing splits")
    t.add_argument("--split", metavar="V=W,V=W", help="a weighted split, e.g. 1=90,2=10")
    t.add_argument("--sticky-key", metavar="HEADER",
                   help="metadata/header whose value keeps a caller on one version of the split")
    t.add_argument("--shadow", metavar="V=FRACTION", help="mirror a fraction of calls to V, e.g. 2=0.1")
    t.add_argument("--fallback", metavar="V", help="the version to call when the chosen one is down")
    t.add_argument("--clear", action="store_true", help="start from no policy (alone: remove it)")
    t.add_argument("--json", action="store_true", help="print JSON")
    t.set_defaults(func=cmd_models_traffic)
    pr = with_actor(with_config(m.add_parser(
        "promote", help="make VERSION the default of NAME, clearing split and shadow")))
    pr.add_argument("name", metavar="NAME")
    pr.add_argument("version", metavar="VERSION")
    pr.set_defaults(func=cmd_models_promote)
    rb = with_actor(with_config(m.add_parser(
        "rollback", help="restore the traffic policy NAME had before its last change")))
    rb.add_argument("name", metavar="NAME")
    rb.set_defaults(func=cmd_models_rollback)
    h = with_config(m.add_parser("history", help="every change of NAME's traffic policy"))
    h.add_argument("name", metavar="NAME")
    h.add_argument("--json", action="store_true", help="print JSON")
    h.set_defaults(func=cmd_models_history)

    i = sub.add_parser("infer", help="call a model through the router")
    i.add_argument("model", metavar="MODEL")
    i.add_argument("--version", help="model version (default: the model's default version)")
    i.add_argument("--tensor", action="append", metavar="NAME=FILE.npy",
                   help="an input tensor from a .npy file (repeat for each input)")
    i.add_argument("--image", action="append", metavar="FILE",
                   help="an image file, one item each (needs the model's image input spec)")
    i.add_argument("--text", action="append", metavar="STR",
                   help="a text, one item each (needs the model's text input spec)")
    i.add_argument("--csv", action="append", metavar="FILE",
                   help="a CSV file with a header, one item each (needs the table input spec)")
    i.add_argument("--output", action="append", metavar="NAME", help="only these outputs")
    i.add_argument("--address", default="127.0.0.1:8500", help="router gRPC address")
    i.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_infer)

    c = sub.add_parser("config", help="list every settings key, default and env variable")
    c.set_defaults(func=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tensorgate` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (config.ConfigError, TensorgateError) as e:
        print(f"tensorgate: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, config.ConfigError) else 1
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        print(f"tensorgate: error: {e}", file=sys.stderr)
        return 1
