"""Regenerate the Python contracts and the API reference from protos/.

Writes, for every package under protos/quartet/:
- client/quartet/<domain>/v1/*_pb2.py, *_pb2_grpc.py and their mypy-protobuf stubs (*.pyi),
  with __init__.py and py.typed files, each generated directory replaced wholesale;
- client/quartet/quartet.binpb, the descriptor set of every quartet proto with its imports and
  comments (source info), which the wheel ships beside the .proto files for other languages' tools;
- third_party/protos/google/, the Google protos a client in another language needs beside
  quartet's (google.rpc.Status and its error details, field_behavior), copied from the installed
  googleapis-common-protos, whose version the dev dependency group pins;
- client/buf/validate/, the Python module of third_party/protos/buf/validate/validate.proto (the
  protovalidate rules quartet's request fields declare), which every quartet module imports, with
  the .proto itself beside it for the wheel;
- docs/api.md, the reference generated from the comments in the .proto files;
- docs/cli.md, the `quartet` command's reference, from its own help (scripts/gen_cli_docs.py).

Usage: python scripts/gen_protos.py [--out ROOT]   (ROOT defaults to the repository; the freshness
test writes to a temporary ROOT and compares it with the committed files).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import gen_cli_docs
import grpc_tools
from google.api import field_behavior_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor

REPO = Path(__file__).resolve().parent.parent
PROTOS = REPO / "protos"
# Directories under client/quartet/ that the generator must never touch.
HAND_WRITTEN = {"client", "cli"}
# protovalidate's rules, vendored by hand (no Python distribution ships the .proto): the version
# and commit are in third_party/protos/README.md. Generated into client/buf/, its import path.
VALIDATE = "buf/validate/validate.proto"
DESCRIPTOR_SET = "quartet.binpb"
# What a client outside Python needs to read quartet's errors (google.rpc.Status in the
# grpc-status-details-bin trailer, with ErrorInfo and BadRequest details) and field behaviours.
VENDORED_DISTRIBUTION = "googleapis-common-protos"
VENDORED = [
    "google/api/field_behavior.proto",
    "google/rpc/code.proto",
    "google/rpc/error_details.proto",
    "google/rpc/status.proto",
]
THIRD_PARTY_README = """# Vendored protos

`google/` is copied by `scripts/gen_protos.py` from {distribution} {version} (Apache License
2.0, as each file's header says); do not edit. `buf/validate/validate.proto` is protovalidate's
rule set (Apache License 2.0), copied by hand from https://github.com/bufbuild/protovalidate at
tag v1.2.2 (commit 4baed765070e580226a0a30bf2a357cc027dc1f7); to update it, copy the new tag's
file and run `scripts/gen_protos.py`. With `protos/` they are every import a quartet client needs
beyond protoc's own `google/protobuf/*`, so that protoc or `buf generate` works offline:

    protoc -I protos -I third_party/protos ...

gRPC health checking and reflection (`grpc.health.v1`, `grpc.reflection.v1`) come with the gRPC
library of every language (and `grpcurl` speaks them). Their protos, at the grpcio version
quartet pins ({grpc_version}), are
https://github.com/grpc/grpc/blob/v{grpc_version}/src/proto/grpc/health/v1/health.proto and
https://github.com/grpc/grpc/blob/v{grpc_version}/src/proto/grpc/reflection/v1/reflection.proto.
"""
PACKAGE_DOC = '"""Generated from protos/{path}. Do not edit; run scripts/gen_protos.py."""\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO, help="root to write into")
    root = parser.parse_args().out.resolve()
    generate(root)


def generate(root: Path) -> None:
    """Write the Python modules to root/client/quartet and the reference to root/docs/api.md."""
    proto_files = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "quartet"
        descriptor_set = Path(tmp) / "descriptors.binpb"
        _protoc(proto_files, Path(tmp), descriptor_set)
        for generated in (out, Path(tmp) / "buf"):
            _prune_empty_grpc_modules(generated)
            _write_package_files(generated)
        target = root / "client" / "quartet"
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.iterdir():
            if stale.is_dir() and stale.name not in HAND_WRITTEN:
                shutil.rmtree(stale)
        for generated in sorted(out.iterdir()):
            shutil.copytree(generated, target / generated.name)
        validate = root / "client" / "buf"
        if validate.exists():
            shutil.rmtree(validate)
        shutil.copytree(Path(tmp) / "buf", validate)
        # Beside its module, as googleapis-common-protos ships google/rpc/*.proto: the wheel's
        # quartet protos import it, and `protoc -I site-packages` must find it.
        shutil.copyfile(REPO / "third_party" / "protos" / VALIDATE, root / "client" / VALIDATE)
        shutil.copyfile(descriptor_set, target / DESCRIPTOR_SET)
        _vendor(root / "third_party" / "protos")
        docs = root / "docs"
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "api.md").write_text(render_reference(descriptor_set, proto_files))
        (docs / "cli.md").write_text(gen_cli_docs.render())


def _protoc(proto_files: list[str], out: Path, descriptor_set: Path) -> None:
    bin_dir = Path(sysconfig.get_path("scripts"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"-I{_vendored_root()}",  # google/api/field_behavior.proto, which quartet's protos import
        f"-I{REPO / 'third_party' / 'protos'}",  # buf/validate/validate.proto, likewise
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        f"--descriptor_set_out={descriptor_set}",
        "--include_imports",  # descriptor.proto too, to read quartet's method option
        "--include_source_info",
        *proto_files,
        VALIDATE,
    ]
    subprocess.run(command, check=True, cwd=PROTOS)


def _vendored_root() -> Path:
    """The include root of the installed distribution that VENDORED is copied from."""
    distribution = importlib.metadata.distribution(VENDORED_DISTRIBUTION)
    return Path(str(distribution.locate_file(VENDORED[0]))).parents[
        len(Path(VENDORED[0]).parts) - 1
    ]


def _vendor(target: Path) -> None:
    """Copy VENDORED from the installed distribution into target, replacing what was there."""
    distribution = importlib.metadata.distribution(VENDORED_DISTRIBUTION)
    if (target / "google").exists():
        shutil.rmtree(target / "google")
    if target.resolve() != (REPO / "third_party" / "protos").resolve():
        (target / VALIDATE).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / "third_party" / "protos" / VALIDATE, target / VALIDATE)
    for name in VENDORED:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(str(distribution.locate_file(name))), target / name)
    readme = THIRD_PARTY_README.format(
        distribution=VENDORED_DISTRIBUTION,
        version=distribution.version,
        grpc_version=importlib.metadata.version("grpcio-tools"),
    )
    (target / "README.md").write_text(readme)


def _prune_empty_grpc_modules(out: Path) -> None:
    """protoc writes a *_pb2_grpc module for every file; keep it only where a service is defined."""
    for grpc_module in out.rglob("*_pb2_grpc.py"):
        if "class " not in grpc_module.read_text():
            grpc_module.unlink()
            grpc_module.with_suffix(".pyi").unlink()


def _write_package_files(out: Path) -> None:
    for directory in [out, *(d for d in out.rglob("*") if d.is_dir())]:
        if directory == out:
            continue
        relative = directory.relative_to(out.parent).as_posix()
        (directory / "__init__.py").write_text(PACKAGE_DOC.format(path=relative))
        (directory / "py.typed").write_text("")


# --- API reference ---------------------------------------------------------------------------

# Paths into FileDescriptorProto, per descriptor.proto's field numbers.
_MESSAGE, _ENUM, _SERVICE = 4, 5, 6
_FIELD, _NESTED, _NESTED_ENUM, _VALUE, _METHOD = 2, 3, 4, 2, 2

_SCALARS = {
    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: "double",
    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: "float",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: "int64",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT64: "uint64",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: "int32",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: "uint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: "bytes",
}


def render_reference(descriptor_set: Path, proto_files: list[str]) -> str:
    """Render the services, messages and enums of proto_files as Markdown, from their comments."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
    ours = [f for f in files if f.name in proto_files]
    lines = [
        "# quartet API reference",
        "",
        "Generated from the comments in `protos/` by `scripts/gen_protos.py`; do not edit.",
        "Errors are described in `quartet.errors.v1.ErrorReason` below and in the README.",
        "",
        "Each method says who may call it (**access**): `anyone`, or the grants that admit a",
        "caller (see `quartet.api.v1.Grant`: an account holds the grant of its role and of the",
        "roles below it, an application holds `application`); and whether a call may be retried",
        "(**idempotency**, protobuf's `idempotency_level`): a call `NO_SIDE_EFFECTS` or",
        "`IDEMPOTENT` is safe to repeat, for example after UNAVAILABLE.",
        "",
        "Each field's **behaviour** is its `google.api.field_behavior` (AIP-203): a request",
        "without a `REQUIRED` field is refused, INVALID_ARGUMENT naming it in `BadRequest` (Login",
        "and RefreshToken answer UNAUTHENTICATED instead, as for a wrong credential); an",
        "`OUTPUT_ONLY` field is set by the server; an `IMMUTABLE` one is set once, when the",
        "resource is created.",
        "",
        "Its **rules** are its `buf.validate` rules (protovalidate): the server checks them before",
        "the method runs, and a request breaking any is refused, INVALID_ARGUMENT with one",
        "`BadRequest` violation (reason `FIELD_INVALID`) per problem. No request text may hold",
        "control characters (U+0000 to U+001F, U+007F). A field marked `IGNORE_ALWAYS` is checked",
        "by the method itself, as its description says.",
        "",
        "With `--http-port` (`docs/http.md`) each method is also served over HTTP at the path its",
        "**HTTP** list gives, with the Connect protocol (JSON or binary body; `GET` too for a",
        "`NO_SIDE_EFFECTS` method) and gRPC-Web. The curl lines assume `--http-port 8080` and a",
        "token or API key in `$TOKEN`; `{}` is an empty request, to fill in as the request table",
        "says.",
        "",
    ]
    access_of = _access_reader(files)
    rules_of = _rules_reader(files)
    for file in sorted(ours, key=lambda f: f.name):
        comments = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        lines += [f"## `{file.package}` ({file.name})", ""]
        for i, service in enumerate(file.service):
            lines += [f"### service `{service.name}`", "", _text(comments, (_SERVICE, i)), ""]
            lines += [
                "| method | request | response | access | idempotency | description |",
                "|---|---|---|---|---|---|",
            ]
            for j, method in enumerate(service.method):
                request = _stream(method.client_streaming) + _short(method.input_type)
                response = _stream(method.server_streaming) + _short(method.output_type)
                doc = _cell(comments, (_SERVICE, i, _METHOD, j))
                access, idempotency = access_of(method.options), _idempotency(method.options)
                lines.append(
                    f"| `{method.name}` | `{request}` | `{response}` | {access} | {idempotency} "
                    f"| {doc} |"
                )
            lines += ["", "HTTP:", ""]
            for method in service.method:
                lines.append(_http_line(file.package, service.name, method))
            lines.append("")
        for path, name, message in _messages(file.message_type, (_MESSAGE,), ""):
            lines += [f"### message `{name}`", "", _text(comments, path), ""]
            if message.field:
                lines += [
                    "| field | type | behaviour | rules | description |",
                    "|---|---|---|---|---|",
                ]
                for k, field in enumerate(message.field):
                    doc = _cell(comments, (*path, _FIELD, k))
                    behaviour, rules = _field_behaviour(field.options), rules_of(field.options)
                    lines.append(
                        f"| `{field.name}` | `{_field_type(field)}` | {behaviour} | {rules} "
                        f"| {doc} |"
                    )
                lines.append("")
            for k, enum in enumerate(message.enum_type):
                lines += _enum(f"{name}.{enum.name}", enum, comments, (*path, _NESTED_ENUM, k))
        for i, enum in enumerate(file.enum_type):
            lines += _enum(enum.name, enum, comments, (_ENUM, i))
    return "\n".join(lines).rstrip() + "\n"


def _access_reader(
    files: Iterable[descriptor_pb2.FileDescriptorProto],
) -> Callable[[descriptor_pb2.MethodOptions], str]:
    """A function that says who may call a method, from its `(quartet.api.v1.access)` option.

    The option is read through a pool made of the protos just compiled, not through the
    generated modules, which may be the stale ones this run replaces."""
    pool = descriptor_pool.DescriptorPool()
    for file in files:
        pool.Add(file)
    options_class = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("google.protobuf.MethodOptions")
    )
    credentials = pool.FindEnumTypeByName("quartet.api.v1.Credentials").values_by_number
    grants = pool.FindEnumTypeByName("quartet.api.v1.Grant").values_by_number

    def access(options: descriptor_pb2.MethodOptions) -> str:
        declared = options_class.FromString(options.SerializeToString()).ListFields()
        found = [value for field, value in declared if field.full_name == "quartet.api.v1.access"]
        if not found:
            return "undeclared"
        rule = found[0]
        match credentials[rule.credentials].name:
            case "CREDENTIALS_NONE":
                return "anyone"
            case "CREDENTIALS_OPTIONAL":
                return "anyone (a credential, when sent, is used)"
        names = [grants[g].name.removeprefix("GRANT_").lower() for g in rule.grants]
        return " or ".join(f"`{name}`" for name in names) or "any credential"

    return access


def _rules_reader(
    files: Iterable[descriptor_pb2.FileDescriptorProto],
) -> Callable[[descriptor_pb2.FieldOptions], str]:
    """A function that renders a field's `(buf.validate.field)` rules, such as `int64.gt = 0`;
    read through the compiled protos' pool, as _access_reader does."""
    pool = descriptor_pool.DescriptorPool()
    for file in files:
        pool.Add(file)
    options_class = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("google.protobuf.FieldOptions")
    )

    def rules(options: descriptor_pb2.FieldOptions) -> str:
        declared = options_class.FromString(options.SerializeToString()).ListFields()
        found = [value for field, value in declared if field.full_name == "buf.validate.field"]
        shown = []
        for field, value in found[0].ListFields() if found else []:
            if field.name == "cel":
                shown += [f"`{rule.id}`: {rule.message}" for rule in value]
            elif field.name == "ignore":
                shown.append(f"`{field.enum_type.values_by_number[value].name}`")
            elif field.message_type is None:
                shown.append(f"`{field.name}`")
            else:
                shown += [
                    f"`{field.name}.{inner.name} = {_rule_value(inner, inner_value)}`"
                    for inner, inner_value in value.ListFields()
                ]
        return ", ".join(shown)

    return rules


def _rule_value(field: FieldDescriptor, value: object) -> str:
    if field.type == FieldDescriptor.TYPE_BOOL:
        return str(value).lower()
    if field.type == FieldDescriptor.TYPE_STRING:
        return json.dumps(value)
    return str(list(value) if isinstance(value, Iterable) else value)


def _field_behaviour(options: descriptor_pb2.FieldOptions) -> str:
    """The field's `google.api.field_behavior` values, such as `REQUIRED`; empty when none."""
    # ListFields, not Extensions[...]: the stubs type the extension as a plain FieldDescriptor.
    declared = options.ListFields()
    behaviours = [b for f, bs in declared if f.full_name == "google.api.field_behavior" for b in bs]
    return ", ".join(f"`{field_behavior_pb2.FieldBehavior.Name(b)}`" for b in behaviours)


def _idempotency(options: descriptor_pb2.MethodOptions) -> str:
    level = descriptor_pb2.MethodOptions.IdempotencyLevel.Name(options.idempotency_level)
    safe = options.idempotency_level != descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN
    return f"`{level}` ({'safe' if safe else 'not safe'} to retry)"


def _messages(
    messages: Iterable[descriptor_pb2.DescriptorProto], prefix: tuple[int, ...], parent: str
) -> Iterator[tuple[tuple[int, ...], str, descriptor_pb2.DescriptorProto]]:
    """Every message, nested ones after their parent: (source path, dotted name, descriptor)."""
    for i, message in enumerate(messages):
        path = (*prefix, i)
        name = f"{parent}{message.name}"
        yield path, name, message
        yield from _messages(message.nested_type, (*path, _NESTED), f"{name}.")


def _enum(
    name: str,
    enum: descriptor_pb2.EnumDescriptorProto,
    comments: dict[tuple[int, ...], str],
    path: tuple[int, ...],
) -> list[str]:
    lines = [f"### enum `{name}`", "", _text(comments, path), ""]
    lines += ["| value | number | description |", "|---|---|---|"]
    for k, value in enumerate(enum.value):
        doc = _cell(comments, (*path, _VALUE, k))
        lines.append(f"| `{value.name}` | {value.number} | {doc} |")
    return [*lines, ""]


def _text(comments: dict[tuple[int, ...], str], path: tuple[int, ...]) -> str:
    return "\n".join(line.strip() for line in comments.get(path, "").strip().splitlines())


def _cell(comments: dict[tuple[int, ...], str], path: tuple[int, ...]) -> str:
    return " ".join(_text(comments, path).split()).replace("|", "\\|")


def _short(type_name: str) -> str:
    return type_name.lstrip(".")


def _http_line(package: str, service: str, method: descriptor_pb2.MethodDescriptorProto) -> str:
    """The method's HTTP path, and a curl line for a unary one (docs/http.md)."""
    path = f"/{package}.{service}/{method.name}"
    if method.client_streaming or method.server_streaming:
        return f"- `POST {path}`: a stream, with a Connect or gRPC-Web client"
    get = method.options.idempotency_level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
    verbs = "POST or GET" if get else "POST"
    curl = (
        "curl -H 'content-type: application/json' -H \"authorization: Bearer $TOKEN\" "
        f"-d '{{}}' localhost:8080{path}"
    )
    return f"- `{verbs} {path}`: `{curl}`"


def _stream(streaming: bool) -> str:
    return "stream " if streaming else ""


def _field_type(field: descriptor_pb2.FieldDescriptorProto) -> str:
    base = _SCALARS.get(field.type) or _short(field.type_name)
    if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        return f"repeated {base}"
    if field.proto3_optional:
        return f"optional {base}"
    return base


if __name__ == "__main__":
    main()
