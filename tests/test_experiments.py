"""ExperimentService through the SDK: the seed's data and tests, every quirk of its files, bad
files (and that nothing was written), re-imports, tie-breaks, progress, pages and permissions."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import google.rpc.error_details_pb2 as error_details_pb2
import grpc
import peewee
import pytest

from quartet.client import Client, FieldViolation, QuartetError
from quartet.experiments.v1 import experiment_service_pb2 as pb
from quartet.experiments.v1 import experiment_service_pb2_grpc
from tests.conftest import Principal
from tests.helpers import Background, schema_drift

SEED = Path(__file__).resolve().parent.parent / "storage/quartet/storage/data/experiments"
SEED_USERS = (SEED / "users.csv").read_bytes()
SEED_COMPOUNDS = (SEED / "compounds.csv").read_bytes()
SEED_EXPERIMENTS = (SEED / "user_experiments.csv").read_bytes()

# The seed's test fixture (tests/test_etl.py): two users, three experiments.
FIXTURE_USERS = b"user_id, name, email, signup_date\n1, Alice, alice@example.com, 2023-01-01\n2, Bob, bob@example.com, 2023-02-01\n"  # noqa: E501
FIXTURE_EXPERIMENTS = (
    b"experiment_id, user_id, experiment_compound_ids, experiment_run_time\n"
    b"1, 1, 1;2, 10\n2, 1, 2;3, 15\n3, 2, 1;3, 20\n"
)
USERS_HEADER = b"user_id,name,email,signup_date\n"
COMPOUNDS_HEADER = b"compound_id,compound_name,compound_structure\n"
EXPERIMENTS_HEADER = b"experiment_id,user_id,experiment_compound_ids,experiment_run_time\n"


def load(
    client: Client,
    users: bytes = SEED_USERS,
    compounds: bytes = SEED_COMPOUNDS,
    experiments: bytes = SEED_EXPERIMENTS,
    **options: Any,
) -> pb.ImportExperimentDataResponse:
    return client.experiments.import_files(
        io.BytesIO(users), io.BytesIO(compounds), io.BytesIO(experiments), **options
    )


def report(client: Client) -> list[tuple[int, str, int, str | None]]:
    """(user id, name, experiments, favourite compound's name or None) for every user."""
    return [
        (
            r.user_id,
            r.name,
            r.experiment_count,
            r.favourite_compound.name if r.HasField("favourite_compound") else None,
        )
        for r in client.experiments.iter_user_reports()
    ]


def snapshot(client: Client) -> tuple[Any, ...]:
    """Everything the data set shows, to check that a failed import changed none of it."""
    return (
        client.experiments.get_report(),
        list(client.experiments.iter_user_reports()),
        list(client.experiments.iter()),
    )


def figures(report: pb.ExperimentReport) -> pb.ExperimentReport:
    """The report without the import it names: what the data set itself says."""
    copy = pb.ExperimentReport()
    copy.CopyFrom(report)
    copy.ClearField("import_id")
    copy.ClearField("publish_time")
    return copy


def rejected(client: Client, **files: Any) -> QuartetError:
    """Import files over the seed data, expect IMPORT_FILES_INVALID, and check nothing changed."""
    load(client)
    before = snapshot(client)
    with pytest.raises(QuartetError) as caught:
        load(client, **files)
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IMPORT_FILES_INVALID")
    assert snapshot(client) == before
    return error


def violations(error: QuartetError) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in error.field_violations]


def trailer_violations(error: QuartetError) -> list[tuple[str, str]]:
    """The violations in the error's own details, which hold only the first problems."""
    assert error.status is not None
    bad_request = error_details_pb2.BadRequest()
    for detail in error.status.details:
        if detail.Unpack(bad_request):
            return [(v.field, v.description) for v in bad_request.field_violations]
    return []


def users_csv(*rows: str) -> bytes:
    return USERS_HEADER + "\n".join(rows).encode()


def compounds_csv(*rows: str) -> bytes:
    return COMPOUNDS_HEADER + "\n".join(rows).encode()


def experiments_csv(*rows: str) -> bytes:
    return EXPERIMENTS_HEADER + "\n".join(rows).encode()


# --- the seed's data and the seed's own tests -----------------------------------------------


SEED_REPORT = [
    (1, "Alice", 2, "Compound B"),
    (2, "Bob", 1, "Compound A"),
    (3, "Carol", 1, "Compound B"),
    (4, "Dave", 1, "Compound A"),
    (5, "Eve", 1, "Compound B"),
    (6, "Frank", 1, "Compound A"),
    (7, "Grace", 1, "Compound B"),
    (8, "Heidi", 1, "Compound A"),
    (9, "Ivan", 1, "Compound B"),
    (10, "Judy", 1, "Compound A"),
]


def test_seed_data_gives_the_seed_report(client: Client) -> None:
    client.experiments.import_directory(SEED)
    totals = client.experiments.get_report()
    assert totals.average_experiments_per_user == 1.1
    assert totals.average_experiments_per_active_user == 1.1
    assert (totals.user_count, totals.active_user_count) == (10, 10)
    assert (totals.experiment_count, totals.compound_count) == (11, 3)
    assert report(client) == SEED_REPORT
    alice = client.experiments.get_user_report(1)
    assert alice.email == "alice@example.com"
    assert alice.signup_date == "2023-01-01"
    assert alice.favourite_compound == pb.Compound(id=2, name="Compound B", structure="C21H30O2")
    assert alice.favourite_compound_uses == 2
    judy = client.experiments.get_user_report(10)
    assert (judy.signup_date, judy.favourite_compound.id, judy.favourite_compound_uses) == (
        "2023-10-01",
        1,
        1,
    )


def test_seed_fixture_gives_an_average_of_one_and_a_half(client: Client) -> None:
    load(client, users=FIXTURE_USERS, experiments=FIXTURE_EXPERIMENTS)
    totals = client.experiments.get_report()
    assert totals.average_experiments_per_user == 1.5
    assert totals.average_experiments_per_active_user == 1.5
    # test_load_report: (user 1, favourite 2, total 2) and (user 2, favourite 1, total 1).
    summaries = [
        (r.user_id, r.favourite_compound.id, r.experiment_count)
        for r in client.experiments.iter_user_reports()
    ]
    assert summaries == [(1, 2, 2), (2, 1, 1)]
    # test_relationships: Alice's favourite is Compound B, C21H30O2.
    alice = client.experiments.get_user_report(1)
    assert (alice.name, alice.favourite_compound.name) == ("Alice", "Compound B")
    assert alice.favourite_compound.structure == "C21H30O2"


CLEAN_USERS = [(1, "Alice", "alice@example.com"), (2, "Bob", "bob@example.com")]


@pytest.mark.parametrize(
    "users",
    [
        b"user_id,name,email,signup_date\n1,Alice,alice@example.com,2023-01-01\n"
        b"2,Bob,bob@example.com,2023-02-01",
        b"1,Alice,alice@example.com,2023-01-01\n2,Bob,bob@example.com,2023-02-01\n",
        b"\n\n\nuser_id,name,email,signup_date\n1,Alice,alice@example.com,2023-01-01\n"
        b"2,Bob,bob@example.com,2023-02-01",
        b"   \n\t\nuser_id,name,email,signup_date\n \n1,Alice,alice@example.com,2023-01-01\n"
        b"\t \n2,Bob,bob@example.com,2023-02-01\n   ",
    ],
    ids=["header", "no header", "leading blank lines", "whitespace-only lines"],
)
def test_seed_cleaner_variants(client: Client, users: bytes) -> None:
    # test_cleaner: with and without a header, blank and whitespace-only lines anywhere.
    load(client, users=users, experiments=FIXTURE_EXPERIMENTS)
    reports = list(client.experiments.iter_user_reports())
    assert [(r.user_id, r.name, r.email) for r in reports] == CLEAN_USERS
    assert [r.signup_date for r in reports] == ["2023-01-01", "2023-02-01"]


# --- quirks ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 64 * 1024])
def test_files_split_anywhere_parse_the_same(client: Client, chunk_size: int) -> None:
    # A two-byte character, a CRLF pair and the comma-tab separator split across chunks.
    users = SEED_USERS.replace(b"Alice", "Zoë".encode()).replace(b"\n", b"\r\n")
    final = load(client, users=users, chunk_size=chunk_size)
    assert final.stage == pb.IMPORT_STAGE_DONE
    assert report(client) == [(1, "Zoë", 2, "Compound B"), *SEED_REPORT[1:]]


def test_seed_quirks_are_accepted_as_they_are(client: Client) -> None:
    assert SEED_USERS.startswith(b"\nuser_id,\tname,\temail,\tsignup_date\n")
    assert not SEED_EXPERIMENTS.endswith(b"\n")
    assert b",\t" in SEED_COMPOUNDS and b"1;2;3" in SEED_EXPERIMENTS
    final = load(client)
    counts = {f.file: (f.rows_read, f.rows_stored, f.bytes_read) for f in final.files}
    assert counts == {
        pb.DATA_FILE_USERS: (10, 10, len(SEED_USERS)),
        pb.DATA_FILE_COMPOUNDS: (3, 3, len(SEED_COMPOUNDS)),
        pb.DATA_FILE_EXPERIMENTS: (11, 11, len(SEED_EXPERIMENTS)),
    }


def test_byte_order_mark_trailing_newline_and_spaces_around_semicolons(client: Client) -> None:
    users = b"\xef\xbb\xbf" + SEED_USERS + b"\n"
    experiments = SEED_EXPERIMENTS.replace(b"1;2;3", b" 1 ; 2 ;3 ") + b"\n\n"
    load(client, users=users, experiments=experiments)
    assert report(client) == SEED_REPORT
    dave = client.experiments.list(user_id=4).experiments[0]
    assert list(dave.compound_ids) == [1, 2, 3]


def test_header_columns_in_another_order_and_extra_columns(client: Client) -> None:
    users = (
        b"email, notes, signup_date, name, USER_ID\nalice@example.com, x, 2023-01-01, Alice, 1\n"
    )
    experiments = (
        b"experiment_run_time, experiment_compound_ids, lab, user_id, experiment_id\n"
        b"12.5, 2;3, north, 1, 7\n"
    )
    load(client, users=users, experiments=experiments)
    assert report(client) == [(1, "Alice", 1, "Compound B")]
    (stored,) = client.experiments.iter()
    assert (stored.id, stored.user_id, list(stored.compound_ids), stored.run_time) == (
        7,
        1,
        [2, 3],
        12.5,
    )


def test_quoted_cells_may_hold_commas_and_quotes(client: Client) -> None:
    compounds = compounds_csv(
        '1,\t"Compound, A",\tC20H25N3O',
        '2,\t"The ""B""" ,\tC21H30O2',
        "3,\tCompound C,\tC8H11NO2",
    )
    load(client, compounds=compounds)
    names = {r.favourite_compound.id: r.favourite_compound.name for r in _reports(client)}
    assert names == {1: "Compound, A", 2: 'The "B"'}


def _reports(client: Client) -> Iterator[pb.UserReport]:
    return client.experiments.iter_user_reports()


def test_raw_experiments_are_stored_in_file_order_with_their_compounds(client: Client) -> None:
    load(client)
    experiments = list(client.experiments.iter(page_size=4))
    assert [e.id for e in experiments] == list(range(1, 12))
    dave = experiments[4]
    assert (dave.user_id, list(dave.compound_ids), dave.run_time, dave.line) == (
        4,
        [1, 2, 3],
        30.0,
        6,
    )
    alice = client.experiments.list(user_id=1)
    assert [(e.id, list(e.compound_ids), e.line) for e in alice.experiments] == [
        (1, [1, 2], 2),
        (2, [2, 3], 3),
    ]
    assert not alice.next_page_token


def test_a_compound_listed_twice_counts_twice(client: Client) -> None:
    experiments = experiments_csv("1, 1, 1;3;3, 5", "2, 1, 2, 5")
    load(client, experiments=experiments)
    alice = client.experiments.get_user_report(1)
    assert (alice.favourite_compound.id, alice.favourite_compound_uses) == (3, 2)
    assert list(next(client.experiments.iter()).compound_ids) == [1, 3, 3]


# --- tie-breaks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "favourite"),
    [
        # Most uses wins, wherever it first appears.
        (["1, 1, 1;2, 5", "2, 1, 3;2, 5"], 2),
        # A tie goes to the compound met first in the earliest experiment, left to right...
        (["1, 1, 3;1, 5"], 3),
        (["1, 1, 2;1;3, 5", "2, 1, 3;1;2, 5"], 2),
        # ... where earliest means first in the file, not the lowest experiment id.
        (["9, 1, 3, 5", "2, 1, 1, 5"], 3),
        # A tie between compounds first met in later experiments follows the same order.
        (["1, 1, 2;2, 5", "2, 1, 3;1, 5", "3, 1, 1;3, 5"], 2),
        (["1, 1, 2, 5", "2, 1, 3;1, 5", "3, 1, 1;3, 5"], 3),
    ],
)
def test_favourite_compound_tie_break(client: Client, rows: list[str], favourite: int) -> None:
    load(client, experiments=experiments_csv(*rows))
    assert client.experiments.get_user_report(1).favourite_compound.id == favourite


# --- users without experiments, and the averages ------------------------------------------


def test_users_without_experiments_count_as_zero(client: Client) -> None:
    load(client, experiments=experiments_csv("1, 1, 1;2, 10", "2, 1, 2, 10", "3, 2, 3, 10"))
    lines = report(client)
    assert lines[:3] == [
        (1, "Alice", 2, "Compound B"),
        (2, "Bob", 1, "Compound C"),
        (3, "Carol", 0, None),
    ]
    carol = client.experiments.get_user_report(3)
    assert not carol.HasField("favourite_compound")
    assert carol.favourite_compound_uses == 0
    totals = client.experiments.get_report()
    assert (totals.user_count, totals.active_user_count, totals.experiment_count) == (10, 2, 3)
    # Over every user (zeros included), and over the users who ran one (the seed's definition).
    assert totals.average_experiments_per_user == pytest.approx(0.3)
    assert totals.average_experiments_per_active_user == 1.5


def test_an_empty_data_set_has_zero_averages(client: Client) -> None:
    load(client, users=USERS_HEADER, compounds=b"", experiments=b"", allow_empty=True)
    totals = client.experiments.get_report()
    assert totals.import_id == 1  # the empty data set still comes from an import
    assert figures(totals) == pb.ExperimentReport()
    assert report(client) == []


NOTHING_ALLOWED = (
    "users.csv has no rows, nor do the other files: importing them would empty the data set, "
    "which the request must allow (allow_empty)"
)


@pytest.mark.parametrize("users", [b"", USERS_HEADER, b"\n  \n"])
def test_files_without_rows_empty_the_data_set_only_when_allowed(
    client: Client, users: bytes
) -> None:
    """Three files without a row were accepted and silently replaced the data set with nothing."""
    error = rejected(client, users=users, compounds=COMPOUNDS_HEADER, experiments=b"")
    assert violations(error) == [("users.csv", NOTHING_ALLOWED)]
    load(client, users=users, compounds=COMPOUNDS_HEADER, experiments=b"", allow_empty=True)
    assert figures(client.experiments.get_report()) == pb.ExperimentReport()


def test_allow_empty_may_be_set_on_any_request_of_the_stream(client: Client) -> None:
    load(client)
    requests = [
        pb.ImportExperimentDataRequest(file=pb.DATA_FILE_USERS),
        pb.ImportExperimentDataRequest(file=pb.DATA_FILE_COMPOUNDS),
        pb.ImportExperimentDataRequest(file=pb.DATA_FILE_EXPERIMENTS, allow_empty=True),
    ]
    assert list(raw_import(client, requests))[-1].stage == pb.IMPORT_STAGE_DONE
    assert report(client) == []


@pytest.mark.parametrize("allow_empty", [False, True])
def test_an_empty_users_file_is_one_problem_not_one_per_experiment(
    client: Client, allow_empty: bool
) -> None:
    """It was reported only as "user N is not in users.csv" on every experiment line."""
    error = rejected(client, users=USERS_HEADER, allow_empty=allow_empty)
    assert violations(error) == [("users.csv", "users.csv has no rows")]
    error = rejected(client, users=b"", experiments=b"", allow_empty=allow_empty)
    assert violations(error) == [("users.csv", "users.csv has no rows")]
    error = rejected(client, compounds=COMPOUNDS_HEADER, allow_empty=allow_empty)
    assert violations(error) == [
        (
            "compounds.csv",
            "compounds.csv has no rows, but user_experiments.csv has experiments naming compounds",
        )
    ]


def test_no_data_imported_yet(client: Client) -> None:
    assert client.experiments.get_report() == pb.ExperimentReport()
    assert client.experiments.list_user_reports() == pb.ListUserReportsResponse()


# --- re-import ---------------------------------------------------------------------------


def test_importing_the_same_files_again_changes_nothing(client: Client) -> None:
    load(client)
    first_report, *first = snapshot(client)
    final = load(client)
    assert final.stage == pb.IMPORT_STAGE_DONE
    again, *rest = snapshot(client)
    assert (figures(again), rest) == (figures(first_report), first)
    assert again.import_id == first_report.import_id + 1  # only the import it names changed


def test_imports_leave_the_schema_as_the_migrations_made_it(
    client: Client, db: peewee.Database
) -> None:
    # On PostgreSQL an import swaps freshly loaded tables in for the stored ones.
    for _ in range(2):
        client.experiments.import_directory(SEED)
        with db.connection_context():
            assert not schema_drift(db)
            assert db.get_primary_keys("experiment") == ["id"]
            keys = db.get_primary_keys("experiment_compound")
            assert keys == ["experiment_id", "position"]
    assert report(client) == SEED_REPORT


def test_an_import_replaces_the_whole_data_set(client: Client) -> None:
    load(client)
    load(client, users=FIXTURE_USERS, experiments=FIXTURE_EXPERIMENTS)
    assert [r[0] for r in report(client)] == [1, 2]
    assert [e.id for e in client.experiments.iter()] == [1, 2, 3]
    with pytest.raises(QuartetError) as caught:
        client.experiments.get_user_report(10)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.resource == ("experiment user", "10")


# --- bad files: every problem, and nothing written ------------------------------------------


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"experiments": SEED_EXPERIMENTS.replace(b"11,\t10,", b"11,\t42,")},
            [("user_experiments.csv:12:user_id", "user 42 is not in users.csv")],
        ),
        (
            {"experiments": SEED_EXPERIMENTS.replace(b"1;2;3", b"1;7;3")},
            [
                (
                    "user_experiments.csv:6:experiment_compound_ids",
                    "compound 7 is not in compounds.csv",
                )
            ],
        ),
        (
            {"users": SEED_USERS.replace(b"3,\tCarol", b"2,\tCarol")},
            [
                ("users.csv:5:user_id", "repeats user_id 2 of line 4"),
                ("user_experiments.csv:5:user_id", "user 3 is not in users.csv"),
            ],
        ),
        (
            {"compounds": SEED_COMPOUNDS + b"\n1,\tAgain,\tC"},
            [("compounds.csv:5:compound_id", "repeats compound_id 1 of line 2")],
        ),
        (
            {"experiments": SEED_EXPERIMENTS + b"\n3,\t1,\t1,\t5"},
            [("user_experiments.csv:13:experiment_id", "repeats experiment_id 3 of line 4")],
        ),
        (
            {"users": SEED_USERS.replace(b"4,\tDave", b"4x,\tDave")},
            [
                ("users.csv:6:user_id", "'4x' is not a whole number"),
                ("user_experiments.csv:6:user_id", "user 4 is not in users.csv"),
            ],
        ),
        (
            {"experiments": SEED_EXPERIMENTS.replace(b"2;3,\t15", b"2;3,\t1.5.0")},
            [
                (
                    "user_experiments.csv:3:experiment_run_time",
                    "'1.5.0' is not a number of zero or more",
                )
            ],
        ),
        (
            {"experiments": SEED_EXPERIMENTS.replace(b"2;3,\t15", b"2;3,\t-15")},
            [
                (
                    "user_experiments.csv:3:experiment_run_time",
                    "'-15' is not a number of zero or more",
                )
            ],
        ),
        (
            {"users": SEED_USERS.replace(b"2023-02-01", b"2023-02-30")},
            [("users.csv:4:signup_date", "'2023-02-30' is not a date (YYYY-MM-DD)")],
        ),
        (
            {"users": SEED_USERS.replace(b"2023-02-01", b"20230201")},
            [("users.csv:4:signup_date", "'20230201' is not a date (YYYY-MM-DD)")],
        ),
        (
            {"users": SEED_USERS.replace(b",\temail,", b",\tmail,")},
            [("users.csv:2", "the header has no column 'email'")],
        ),
        (
            {"users": SEED_USERS.replace(b",\tbob@example.com", b"")},
            [
                ("users.csv:4", "has 3 cells; expected 4"),
                ("user_experiments.csv:4:user_id", "user 2 is not in users.csv"),
            ],
        ),
        (
            {"compounds": SEED_COMPOUNDS.replace(b"Compound B", b"  ")},
            [("compounds.csv:3:compound_name", "is empty")],
        ),
        (
            {"experiments": SEED_EXPERIMENTS.replace(b"1;2;3", b"1;;3")},
            [
                (
                    "user_experiments.csv:6:experiment_compound_ids",
                    "'1;;3' has an empty entry between ';'",
                )
            ],
        ),
        (
            {"users": SEED_USERS.replace(b"Carol", b"Car\xffol")},
            [("users.csv:5", "is not valid UTF-8")],
        ),
        (
            {"compounds": SEED_COMPOUNDS.replace(b"Compound B", b'"Compound B')},
            [("compounds.csv:3", "has a quote that is not closed")],
        ),
        (
            {"users": SEED_USERS.replace(b"Bob", b"B" * 70_000)},
            [
                ("users.csv:4", "is longer than 65,536 characters"),
                ("user_experiments.csv:4:user_id", "user 2 is not in users.csv"),
            ],
        ),
        (
            {"users": SEED_USERS.replace(b"Bob", b"B" * 201)},
            [("users.csv:4:name", "is longer than 200 characters")],
        ),
        (
            {"users": SEED_USERS.replace(b"1,\tAlice", b"99999999999999999999,\tAlice")},
            [
                (
                    "users.csv:3:user_id",
                    "'99999999999999999999' is not between 1 and 9223372036854775807",
                ),
                ("user_experiments.csv:2:user_id", "user 1 is not in users.csv"),
                ("user_experiments.csv:3:user_id", "user 1 is not in users.csv"),
            ],
        ),
    ],
    ids=[
        "unknown user",
        "unknown compound",
        "duplicate user",
        "duplicate compound",
        "duplicate experiment",
        "malformed id",
        "malformed run time",
        "negative run time",
        "impossible date",
        "date without dashes",
        "missing column",
        "missing cell",
        "empty cell",
        "empty compound entry",
        "invalid UTF-8",
        "unclosed quote",
        "over-long line",
        "over-long name",
        "id out of range",
    ],
)
def test_a_bad_file_is_rejected_with_where_and_why(
    client: Client, files: dict[str, bytes], expected: list[tuple[str, str]]
) -> None:
    error = rejected(client, **files)
    assert violations(error) == expected
    count = str(len(expected))
    assert error.metadata == {"problem_count": count, "reported_count": count}
    assert f"{expected[0][0]}: {expected[0][1]}" in error.message


def test_an_over_long_line_is_dropped_as_it_arrives(client: Client) -> None:
    # Sent in small chunks, the line never sits whole in the server; the next line still counts.
    users = SEED_USERS.replace(b"Bob", b"B" * 70_000).replace(b"Carol", b"\xff")
    load(client)
    before = snapshot(client)
    with pytest.raises(QuartetError) as caught:
        load(client, users=users, chunk_size=4096)
    assert violations(caught.value) == [
        ("users.csv:4", "is longer than 65,536 characters"),
        ("users.csv:5", "is not valid UTF-8"),
        ("user_experiments.csv:4:user_id", "user 2 is not in users.csv"),
    ]
    assert snapshot(client) == before


def test_every_problem_is_reported_in_file_line_and_column_order(client: Client) -> None:
    users = users_csv("1, Alice, a@x, 2023-01-01", "1, , b@x, 2023-01-32", "x, C, c@x, 2023-01-01")
    experiments = experiments_csv("1, 1, 1;9, 10", "2, 5, 2, ten", "1, 1, 1, 1")
    error = rejected(client, users=users, experiments=experiments)
    assert violations(error) == [
        ("users.csv:3:user_id", "repeats user_id 1 of line 2"),
        ("users.csv:3:name", "is empty"),
        ("users.csv:3:signup_date", "'2023-01-32' is not a date (YYYY-MM-DD)"),
        ("users.csv:4:user_id", "'x' is not a whole number"),
        ("user_experiments.csv:2:experiment_compound_ids", "compound 9 is not in compounds.csv"),
        ("user_experiments.csv:3:user_id", "user 5 is not in users.csv"),
        ("user_experiments.csv:3:experiment_run_time", "'ten' is not a number of zero or more"),
        ("user_experiments.csv:4:experiment_id", "repeats experiment_id 1 of line 2"),
    ]
    assert error.metadata == {"problem_count": "8", "reported_count": "8"}


def test_a_row_with_a_bad_cell_still_defines_its_id(client: Client) -> None:
    # Bob's date is wrong, but his experiments are not also reported as naming an unknown user.
    error = rejected(client, users=SEED_USERS.replace(b"2023-02-01", b"soon"))
    assert violations(error) == [("users.csv:4:signup_date", "'soon' is not a date (YYYY-MM-DD)")]


def test_every_problem_is_streamed_and_the_first_fifty_are_in_the_trailers(
    client: Client,
) -> None:
    users = users_csv(*(f"{n}, U{n}, u{n}@x, 2023-02-{n % 40 + 1:02}" for n in range(1, 301)))
    load(client)
    seen: list[pb.ImportExperimentDataResponse] = []
    with pytest.raises(QuartetError) as caught:
        load(client, users=users, on_progress=seen.append)
    error = caught.value
    bad_days = [n for n in range(1, 301) if n % 40 + 1 > 28]
    expected = [
        (f"users.csv:{n + 1}:signup_date", f"'2023-02-{n % 40 + 1}' is not a date (YYYY-MM-DD)")
        for n in bad_days
    ]
    assert violations(error) == expected  # every one, from the stream
    rejected_messages = [p for p in seen if p.stage == pb.IMPORT_STAGE_REJECTED]
    assert sum(len(p.problems) for p in rejected_messages) == len(bad_days)
    assert rejected_messages[0].problems[0] == pb.ImportProblem(
        file=pb.DATA_FILE_USERS, line=29, column="signup_date", description=expected[0][1]
    )
    assert error.metadata == {"problem_count": str(len(bad_days)), "reported_count": "50"}
    assert trailer_violations(error) == expected[:50]
    assert f"{len(bad_days)} problems" in error.message and "the first 50" in error.message


def test_ten_thousand_problems_are_listed_and_every_one_counted(client: Client) -> None:
    users = users_csv(*(f"{n}, U{n}, u{n}@x, soon" for n in range(1, 10_101)))
    error = rejected(client, users=users)
    assert error.metadata["problem_count"] == "10100"
    assert len(error.field_violations) == 10_000
    assert error.field_violations[-1].field == "users.csv:10001:signup_date"


def test_the_longest_problems_still_fit_in_the_trailers(client: Client) -> None:
    # Seven-digit lines and long quoted values: fewer than 50 fit in the byte budget.
    rows = (f"{n}, 1, 1;;{'9' * 40}, 1" for n in range(1, 101))
    experiments = EXPERIMENTS_HEADER + b"\n" * 1_000_000 + "\n".join(rows).encode()
    error = rejected(client, experiments=experiments)
    assert error.metadata["problem_count"] == "200"
    assert len(error.field_violations) == 200
    reported = int(error.metadata["reported_count"])
    assert 40 <= reported < 50 and len(trailer_violations(error)) == reported
    assert error.field_violations[0] == FieldViolation(
        "user_experiments.csv:1000002:experiment_compound_ids",
        "'1;;" + "9" * 24 + "...' has an empty entry between ';'",
    )


@pytest.mark.parametrize(
    ("requests", "reason", "violation"),
    [
        (
            [
                pb.ImportExperimentDataRequest(file=pb.DATA_FILE_USERS, data=SEED_USERS),
                pb.ImportExperimentDataRequest(file=pb.DATA_FILE_EXPERIMENTS, data=b""),
            ],
            "IMPORT_FILES_INVALID",
            ("compounds.csv", "compounds.csv was not sent; an import needs all three files"),
        ),
        (
            [pb.ImportExperimentDataRequest(data=b"1")],
            "FIELD_INVALID",
            (
                "messages[0].file",
                "must be DATA_FILE_USERS, DATA_FILE_COMPOUNDS or DATA_FILE_EXPERIMENTS",
            ),
        ),
        (
            [
                pb.ImportExperimentDataRequest(file=pb.DATA_FILE_USERS, data=SEED_USERS[:50]),
                pb.ImportExperimentDataRequest(file=pb.DATA_FILE_COMPOUNDS, data=SEED_COMPOUNDS),
                pb.ImportExperimentDataRequest(file=pb.DATA_FILE_USERS, data=SEED_USERS[50:]),
            ],
            "FIELD_INVALID",
            ("file", "users.csv was already sent"),
        ),
    ],
    ids=["file missing", "file unnamed", "file resumed"],
)
def test_a_stream_without_each_file_once_is_refused(
    client: Client,
    requests: list[pb.ImportExperimentDataRequest],
    reason: str,
    violation: tuple[str, str],
) -> None:
    load(client)
    before = snapshot(client)
    with pytest.raises(QuartetError) as caught:
        list(raw_import(client, requests))
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert violations(caught.value) == [violation]
    assert snapshot(client) == before


def raw_import(
    client: Client, requests: list[pb.ImportExperimentDataRequest] | Iterator[Any]
) -> Iterator[pb.ImportExperimentDataResponse]:
    stub = experiment_service_pb2_grpc.ExperimentServiceStub(client.channel)
    try:
        yield from stub.ImportExperimentData(iter(requests), timeout=30, metadata=client.metadata)
    except grpc.RpcError as error:
        raise QuartetError.from_rpc_error(error) from None


def test_a_missing_path_fails_before_calling_the_server(client: Client, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        client.experiments.import_files(
            tmp_path / "users.csv", SEED / "compounds.csv", SEED / "user_experiments.csv"
        )


# --- progress ----------------------------------------------------------------------------


def test_progress_goes_file_by_file_then_checks_publishes_and_is_done(client: Client) -> None:
    seen: list[pb.ImportExperimentDataResponse] = []
    final = load(client, on_progress=seen.append)
    assert seen[-1] == final
    stages = [p.stage for p in seen]
    assert stages[-3:] == [
        pb.IMPORT_STAGE_CHECKING,
        pb.IMPORT_STAGE_PUBLISHING,
        pb.IMPORT_STAGE_DONE,
    ]
    assert set(stages[:-3]) == {pb.IMPORT_STAGE_RECEIVING}
    # One message as each of the first two files completes; the last one completes at CHECKING.
    assert [[f.file for f in p.files] for p in seen[:2]] == [
        [pb.DATA_FILE_USERS],
        [pb.DATA_FILE_USERS, pb.DATA_FILE_COMPOUNDS],
    ]
    assert seen[0].files[0] == pb.FileProgress(
        file=pb.DATA_FILE_USERS,
        bytes_read=len(SEED_USERS),
        rows_read=10,
        rows_stored=10,
        complete=True,
    )
    assert all(f.complete for f in final.files)


def test_a_large_file_reports_progress_batch_by_batch(client: Client) -> None:
    users = users_csv(*(f"{n}, U{n}, u{n}@x.com, 2023-01-01" for n in range(1, 1001)))
    experiments = experiments_csv(
        *(f"{n}, {n % 1000 + 1}, {n % 3 + 1};{(n + 1) % 3 + 1}, {n}" for n in range(1, 25_001))
    )
    seen: list[pb.ImportExperimentDataResponse] = []
    load(client, users=users, experiments=experiments, on_progress=seen.append)
    stored = [
        f.rows_stored
        for p in seen
        if p.stage == pb.IMPORT_STAGE_RECEIVING
        for f in p.files
        if f.file == pb.DATA_FILE_EXPERIMENTS
    ]
    assert len(stored) >= 2 and stored == sorted(stored) and 0 < stored[0] < 25_000
    read = [f.bytes_read for p in seen for f in p.files if f.file == pb.DATA_FILE_EXPERIMENTS]
    assert read == sorted(read) and read[-1] == len(experiments)
    assert client.experiments.get_report().experiment_count == 25_000
    assert client.experiments.get_user_report(7).experiment_count == 25


def test_progress_bar_on_a_terminal_and_in_a_log(client: Client) -> None:
    from quartet.client.progress import ImportProgressBar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, log = Terminal(), io.StringIO()
    total = len(SEED_USERS) + len(SEED_COMPOUNDS) + len(SEED_EXPERIMENTS)
    with ImportProgressBar(total, terminal) as bar, ImportProgressBar(None, log) as plain:

        def both(progress: pb.ImportExperimentDataResponse) -> None:
            bar(progress)
            plain(progress)

        load(client, on_progress=both)
    assert terminal.getvalue().endswith(
        "\r[##############################] 100%  done: 10 users, 3 compounds, 11 experiments"
        "\033[K\n"
    )
    assert log.getvalue().splitlines() == [
        "users.csv: 10 rows read, 10 stored",
        "compounds.csv: 3 rows read, 3 stored",
        "user_experiments.csv: 11 rows read, 11 stored",
        "checking ids across the files",
        "replacing the stored data set",
        "done: 10 users, 3 compounds, 11 experiments",
    ]


# --- an import in flight -------------------------------------------------------------------


def gated(gate: threading.Event) -> Iterator[pb.ImportExperimentDataRequest]:
    """Send users and compounds, then wait for the gate before sending the experiments."""
    yield pb.ImportExperimentDataRequest(file=pb.DATA_FILE_USERS, data=FIXTURE_USERS)
    yield pb.ImportExperimentDataRequest(file=pb.DATA_FILE_COMPOUNDS, data=SEED_COMPOUNDS)
    gate.wait(20)
    yield pb.ImportExperimentDataRequest(file=pb.DATA_FILE_EXPERIMENTS, data=FIXTURE_EXPERIMENTS)


def test_others_read_and_write_while_an_import_is_staged(client: Client) -> None:
    load(client)
    before = snapshot(client)
    gate = threading.Event()
    progress: list[pb.ImportExperimentDataResponse] = []
    call = Background(lambda: progress.extend(raw_import(client, gated(gate))))
    call.start()
    _wait_for(lambda: bool(progress))
    # The import holds no lock the rest of quartet needs, and shows nothing until it is done.
    assert client.scores.create(1, timeout=3).value == 2
    assert snapshot(client) == before
    gate.set()
    call.join_result()
    assert progress[-1].stage == pb.IMPORT_STAGE_DONE
    assert [r[0] for r in report(client)] == [1, 2]


def test_a_cancelled_import_writes_nothing(client: Client) -> None:
    load(client)
    before = snapshot(client)
    gate = threading.Event()
    stub = experiment_service_pb2_grpc.ExperimentServiceStub(client.channel)
    call = stub.ImportExperimentData(gated(gate), timeout=30, metadata=client.metadata)
    next(call)
    call.cancel()
    gate.set()
    assert call.code() == grpc.StatusCode.CANCELLED
    assert snapshot(client) == before
    load(client, users=FIXTURE_USERS, experiments=FIXTURE_EXPERIMENTS)
    assert [r[0] for r in report(client)] == [1, 2]


def test_imports_run_one_after_the_other(client: Client) -> None:
    gate = threading.Event()
    first: list[pb.ImportExperimentDataResponse] = []
    second: list[pb.ImportExperimentDataResponse] = []
    calls = [
        Background(lambda: first.extend(raw_import(client, gated(gate)))),
        Background(lambda: second.extend(client.experiments.iter_import(*_seed_files()))),
    ]
    calls[0].start()
    _wait_for(lambda: bool(first))
    calls[1].start()
    time.sleep(0.5)
    assert not second  # waiting for the first import, which waits for its last file
    gate.set()
    for call in calls:
        call.join_result()
    assert first[-1].stage == second[-1].stage == pb.IMPORT_STAGE_DONE
    assert report(client) == SEED_REPORT  # the second import came last


def _seed_files() -> list[io.BytesIO]:
    return [io.BytesIO(data) for data in (SEED_USERS, SEED_COMPOUNDS, SEED_EXPERIMENTS)]


def _wait_for(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --- reading the report --------------------------------------------------------------------


def test_user_reports_come_in_pages(client: Client) -> None:
    load(client)
    first = client.experiments.list_user_reports(page_size=4)
    assert [r.user_id for r in first.user_reports] == [1, 2, 3, 4]
    second = client.experiments.list_user_reports(page_size=4, page_token=first.next_page_token)
    assert [r.user_id for r in second.user_reports] == [5, 6, 7, 8]
    third = client.experiments.list_user_reports(page_size=4, page_token=second.next_page_token)
    assert [r.user_id for r in third.user_reports] == [9, 10]
    assert not third.next_page_token
    assert [r.user_id for r in client.experiments.iter_user_reports(page_size=3)] == list(
        range(1, 11)
    )
    assert len(client.experiments.list_user_reports(page_size=5000).user_reports) == 10


def test_experiments_come_in_pages_and_by_user(client: Client) -> None:
    load(client)
    page = client.experiments.list(page_size=5)
    assert [e.id for e in page.experiments] == [1, 2, 3, 4, 5]
    rest = client.experiments.list(page_size=10, page_token=page.next_page_token)
    assert [e.id for e in rest.experiments] == [6, 7, 8, 9, 10, 11]
    assert [e.id for e in client.experiments.iter(user_id=1, page_size=1)] == [1, 2]
    assert client.experiments.list(user_id=99) == pb.ListExperimentsResponse()
    with pytest.raises(QuartetError) as caught:
        client.experiments.list(user_id=2, page_token=page.next_page_token)
    assert caught.value.reason == "PAGE_TOKEN_INVALID"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.experiments.list_user_reports(page_size=-1), "page_size"),
        (lambda c: c.experiments.list_user_reports(page_token="garbage"), "page_token"),
        (lambda c: c.experiments.list(page_size=-1), "page_size"),
        (lambda c: c.experiments.list(user_id=0), "user_id"),
        (lambda c: c.experiments.get_user_report(0), "user_id"),
        (lambda c: c.experiments.get_user_report(-3), "user_id"),
    ],
)
def test_invalid_read_requests(client: Client, call: Callable[[Client], Any], field: str) -> None:
    with pytest.raises(QuartetError) as caught:
        call(client)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == [field]


def test_unknown_user_report_is_not_found(client: Client) -> None:
    load(client)
    with pytest.raises(QuartetError) as caught:
        client.experiments.get_user_report(11)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "RESOURCE_NOT_FOUND"


# --- permissions -------------------------------------------------------------------------


def test_analysts_read_but_may_not_import(
    client: Client, sign_in: Callable[..., Principal]
) -> None:
    load(client)
    analyst = sign_in("analyst").client
    assert analyst.experiments.get_report().experiment_count == 11
    assert len(list(analyst.experiments.iter_user_reports())) == 10
    assert analyst.experiments.get_user_report(1).experiment_count == 2
    assert len(list(analyst.experiments.iter())) == 11
    with pytest.raises(QuartetError) as caught:
        load(analyst)
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED


READS: list[Callable[[Client], Any]] = [
    lambda c: c.experiments.get_report(),
    lambda c: c.experiments.list_user_reports(),
    lambda c: c.experiments.get_user_report(1),
    lambda c: c.experiments.list(),
    load,
]


@pytest.mark.parametrize("call", READS, ids=["report", "list reports", "get", "list", "import"])
def test_users_and_anonymous_callers_are_refused(
    call: Callable[[Client], Any], sign_in: Callable[..., Principal], anonymous: Client
) -> None:
    with pytest.raises(QuartetError) as caught:
        call(sign_in("user").client)
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    )
    with pytest.raises(QuartetError) as caught:
        call(anonymous)
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
