"""`quartet-experiments`: import the experiment data set into a quartet server, and print its
report, from the command line.

    QUARTET_EMAIL=admin@example.com quartet-experiments import data/
    quartet-experiments --token "$TOKEN" report
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from quartet.client._client import Client
from quartet.client._errors import QuartetError
from quartet.client._experiments import FILE_NAMES
from quartet.client.progress import ImportProgressBar
from quartet.experiments.v1 import experiment_service_pb2 as pb

FLAGS = ("users", "compounds", "experiments")  # the flags naming each file, in FILE_NAMES order


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        with _connect(args) as client:
            args.command(client, args)
    except QuartetError as error:
        print(f"error: {error}", file=sys.stderr)
        for violation in error.field_violations:
            print(f"  {violation.field}: {violation.description}", file=sys.stderr)
        count = error.metadata.get("problem_count")
        if count and int(count) > len(error.field_violations):
            print(f"  ... {int(count):,} problems in all", file=sys.stderr)
        sys.exit(1)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # closing the channel cancels the call: the import changes nothing
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


def _import(client: Client, args: argparse.Namespace) -> None:
    paths: list[Path] = []
    for flag, file_name in zip(FLAGS, FILE_NAMES.values(), strict=True):
        if getattr(args, flag):
            paths.append(Path(getattr(args, flag)))
        elif args.directory:
            paths.append(Path(args.directory) / file_name)
        else:
            raise ValueError("give a DIRECTORY, or all of --users, --compounds and --experiments")
    users, compounds, experiments = paths
    total = sum(path.stat().st_size for path in (users, compounds, experiments))
    with ImportProgressBar(total) as bar:
        client.experiments.import_files(
            users, compounds, experiments, on_progress=bar, allow_empty=args.allow_empty
        )


def _report(client: Client, args: argparse.Namespace) -> None:
    if args.user is not None:
        _print_users([client.experiments.get_user_report(args.user)])
        return
    report = client.experiments.get_report()
    print(
        f"{report.experiment_count:,} experiments by {report.user_count:,} users "
        f"({report.active_user_count:,} ran at least one), {report.compound_count:,} compounds\n"
        f"average experiments per user: {report.average_experiments_per_user:g} "
        f"(per user who ran one: {report.average_experiments_per_active_user:g})"
    )
    _print_users(client.experiments.iter_user_reports(page_size=1000))


def _print_users(reports: Iterable[pb.UserReport]) -> None:
    print(f"{'user':>8}  {'name':<24} {'experiments':>11}  favourite compound")
    for r in reports:
        favourite = (
            f"{r.favourite_compound.name} ({r.favourite_compound_uses}x)"
            if r.HasField("favourite_compound")
            else "-"
        )
        print(f"{r.user_id:>8}  {r.name:<24} {r.experiment_count:>11}  {favourite}")


def _connect(args: argparse.Namespace) -> Client:
    tls: bool | bytes = Path(args.ca_file).read_bytes() if args.ca_file else args.tls
    client = Client(args.target, token=args.token or None, tls=tls)
    if args.email:
        password = os.environ.get("QUARTET_PASSWORD") or getpass.getpass(
            f"password for {args.email}: "
        )
        try:
            client.login(args.email, password)
        except BaseException:
            client.close()
            raise
    return client


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quartet-experiments",
        description="Import the experiment data set into quartet, and print its report.",
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("QUARTET_TARGET", "localhost:50051"),
        help="the server's host:port (QUARTET_TARGET; localhost:50051)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("QUARTET_TOKEN", ""),
        help="an access token to send (QUARTET_TOKEN)",
    )
    parser.add_argument(
        "--email",
        default=os.environ.get("QUARTET_EMAIL", ""),
        help="log in as this account instead (QUARTET_EMAIL); the password comes from "
        "QUARTET_PASSWORD or a prompt",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's roots")
    parser.add_argument("--ca-file", help="use TLS, trusting this PEM root certificate")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    importer = commands.add_parser(
        "import",
        help="replace the data set with DIRECTORY's users.csv, compounds.csv and "
        "user_experiments.csv (admins only), showing progress",
    )
    importer.set_defaults(command=_import)
    importer.add_argument("directory", nargs="?", metavar="DIRECTORY")
    for name, file_name in zip(FLAGS, FILE_NAMES.values(), strict=True):
        importer.add_argument(f"--{name}", metavar="FILE", help=f"instead of DIRECTORY/{file_name}")
    importer.add_argument(
        "--allow-empty",
        action="store_true",
        help="let files without any row empty the data set (refused otherwise)",
    )
    report = commands.add_parser("report", help="print the report (analysts and admins)")
    report.set_defaults(command=_report)
    report.add_argument("--user", type=int, metavar="ID", help="only this user's report")
    return parser


if __name__ == "__main__":
    main()
