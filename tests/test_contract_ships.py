"""The contract ships: the wheel carries the protos and a descriptor set, and the repository alone
compiles them (with the Google protos a client needs) without anything installed for Python."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import zipfile
from pathlib import Path

from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parent.parent
PROTOS = REPO / "protos"
THIRD_PARTY = REPO / "third_party" / "protos"
OUR_PROTOS = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
VENDORED = sorted(p.relative_to(THIRD_PARTY).as_posix() for p in THIRD_PARTY.rglob("*.proto"))


def protoc(out: Path, *includes: Path, files: list[str]) -> descriptor_pb2.FileDescriptorSet:
    """Compile files with only these include paths (and protoc's own google/protobuf/*)."""
    descriptor_set = out / "compiled.binpb"
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",  # its entry point adds protoc's well-known types, as protoc has them
        *(f"-I{path}" for path in includes),
        f"--descriptor_set_out={descriptor_set}",
        "--include_imports",
        *files,
    ]
    result = subprocess.run(command, cwd=out, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())


def services(descriptors: descriptor_pb2.FileDescriptorSet) -> set[str]:
    return {f"{f.package}.{s.name}" for f in descriptors.file for s in f.service}


def messages(
    descriptors: descriptor_pb2.FileDescriptorSet,
) -> dict[str, descriptor_pb2.DescriptorProto]:
    found = {}
    for file in descriptors.file:
        for message in file.message_type:
            found[f"{file.package}.{message.name}"] = message
            for nested in message.nested_type:
                found[f"{file.package}.{message.name}.{nested.name}"] = nested
    return found


def test_the_repository_alone_compiles_the_protos_and_the_google_ones_clients_need(
    tmp_path: Path,
) -> None:
    compiled = protoc(tmp_path, PROTOS, THIRD_PARTY, files=OUR_PROTOS + VENDORED)
    names = {f.name for f in compiled.file}
    assert {"google/rpc/status.proto", "google/rpc/error_details.proto"} <= names
    assert {"google/rpc/code.proto", "google/api/field_behavior.proto"} <= names
    violation = messages(compiled)["google.rpc.BadRequest.FieldViolation"]
    assert "reason" in {field.name for field in violation.field}  # quartet sends one per problem
    assert services(compiled), "no quartet service compiled"


def test_the_wheel_carries_the_protos_and_a_descriptor_set_of_every_service(
    tmp_path: Path,
) -> None:
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), "."]
    subprocess.run(build, cwd=REPO, check=True)
    [wheel] = dist.glob("quartet-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
        descriptor_set = archive.read("quartet/quartet.binpb")
        extracted = tmp_path / "site-packages"
        archive.extractall(extracted)
    assert {f"quartet/{name.removeprefix('quartet/')}" for name in OUR_PROTOS} <= shipped
    assert not any(name.startswith("google/") for name in shipped), "those ship with googleapis"

    shipped_set = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    fresh = protoc(tmp_path, PROTOS, THIRD_PARTY, files=OUR_PROTOS)
    assert services(shipped_set) == services(fresh)
    names = [f.name for f in shipped_set.file]
    assert set(OUR_PROTOS) <= set(names)
    assert "google/protobuf/timestamp.proto" in names, "imports included"
    ours = [f for f in shipped_set.file if f.name in OUR_PROTOS]
    assert all(f.source_code_info.location for f in ours), "comments included"

    # The installed wheel is an include path, as googleapis-common-protos' files are (which the
    # wheel depends on, for google/api/field_behavior.proto).
    googleapis = Path(
        str(importlib.metadata.distribution("googleapis-common-protos").locate_file(""))
    )
    from_wheel = protoc(tmp_path, extracted, googleapis, files=OUR_PROTOS)
    assert services(from_wheel) == services(fresh)
