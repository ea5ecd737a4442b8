"""ExperimentService's run times, report filters, exports and import history, through the SDK
and the real server. Every figure is checked against an independent computation from the CSV
files in plain Python (the seed's own parsing: split on commas, strip, skip rows whose first cell
is not a number)."""

from __future__ import annotations

import asyncio
import csv
import datetime
import io
import json
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from quartet.client import Client, QuartetError
from quartet.client import aio as quartet_aio
from quartet.experiments.v1 import experiment_service_pb2 as pb
from tests.conftest import Principal
from tests.test_experiments import SEED_COMPOUNDS, SEED_EXPERIMENTS, SEED_USERS, load, raw_import

# --- an independent computation of the report ---------------------------------------------------


def rows(data: bytes) -> list[list[str]]:
    """The data rows of a file, as the seed's ETL read them."""
    found = []
    for line in data.decode().splitlines():
        cells = [cell.strip() for cell in line.split(",")]
        if cells[0].isdigit():
            found.append(cells)
    return found


@dataclass
class Expected:
    """What the report must say, computed from the files."""

    users: dict[int, tuple[str, datetime.date]]  # id: name, signup date
    compounds: list[int]
    runs: list[tuple[int, int, list[int], float]]  # experiment id, user id, compounds, run time

    @classmethod
    def of(cls, users: bytes, compounds: bytes, experiments: bytes) -> Expected:
        return cls(
            {int(r[0]): (r[1], datetime.date.fromisoformat(r[3])) for r in rows(users)},
            [int(r[0]) for r in rows(compounds)],
            [
                (int(r[0]), int(r[1]), [int(c) for c in r[2].split(";")], float(r[3]))
                for r in rows(experiments)
            ],
        )

    def selected(
        self,
        compound: int | None = None,
        start: datetime.date | None = None,
        end: datetime.date | None = None,
    ) -> list[int]:
        """The ids of the users the filter selects, in order."""
        used = {user for _, user, ids, _ in self.runs if compound in ids}
        return sorted(
            user
            for user, (_, signup) in self.users.items()
            if (compound is None or user in used)
            and (start is None or signup >= start)
            and (end is None or signup <= end)
        )

    def user_run_times(self, users: list[int]) -> dict[int, tuple[int, float, float]]:
        """Each user's experiment count, total and average run time (0 without experiments)."""
        times: dict[int, list[float]] = {user: [] for user in users}
        for _, user, _, run_time in self.runs:
            if user in times:
                times[user].append(run_time)
        return {user: (len(t), sum(t), sum(t) / len(t) if t else 0.0) for user, t in times.items()}

    def totals(self, users: list[int]) -> tuple[int, int, int, float, float]:
        """users, active users, experiments, total and average run time."""
        per_user = self.user_run_times(users)
        experiments = sum(count for count, _, _ in per_user.values())
        total = sum(run_time for _, run_time, _ in per_user.values())
        active = sum(1 for count, _, _ in per_user.values() if count)
        return len(users), active, experiments, total, total / experiments if experiments else 0.0

    def compound_run_times(self, users: list[int]) -> dict[int, tuple[int, float]]:
        """Each compound's experiment count (each experiment once) and average run time."""
        times: dict[int, list[float]] = defaultdict(list)
        chosen = set(users)
        for _, user, ids, run_time in self.runs:
            if user in chosen:
                for compound in set(ids):
                    times[compound].append(run_time)
        return {
            c: (len(times[c]), sum(times[c]) / len(times[c]) if times[c] else 0.0)
            for c in self.compounds
        }


def generated_files(seed: int = 16) -> tuple[bytes, bytes, bytes]:
    """A data set with what the seed's lacks: users without experiments, fractional run times,
    a compound listed twice in one experiment, unused compounds, signups over two years."""
    rng = random.Random(seed)
    users = ["user_id,name,email,signup_date"]
    first = datetime.date(2022, 1, 1)
    for user in range(1, 61):
        signup = first + datetime.timedelta(days=rng.randrange(730))
        users.append(f"{user},User {user},u{user}@example.com,{signup.isoformat()}")
    compounds = ["compound_id,compound_name,compound_structure"]
    compounds += [f"{c},Compound {c},C{c}H{c}O" for c in range(1, 9)]
    experiments = ["experiment_id,user_id,experiment_compound_ids,experiment_run_time"]
    for experiment in range(1, 201):
        user = rng.randrange(1, 46)  # users 46 to 60 run nothing
        ids = [rng.randrange(1, 7) for _ in range(rng.randrange(1, 4))]  # 7 and 8 unused
        run_time = round(rng.uniform(0.5, 90), 3)
        experiments.append(f"{experiment},{user},{';'.join(map(str, ids))},{run_time}")
    return tuple("\n".join(lines).encode() for lines in (users, compounds, experiments))  # type: ignore[return-value]


GENERATED = generated_files()
SEED = (SEED_USERS, SEED_COMPOUNDS, SEED_EXPERIMENTS)


def load_files(client: Client, files: tuple[bytes, bytes, bytes]) -> Expected:
    load(client, *files)
    return Expected.of(*files)


def user_figures(reports: list[pb.UserReport]) -> dict[int, tuple[int, float, float]]:
    return {r.user_id: (r.experiment_count, r.total_run_time, r.average_run_time) for r in reports}


def approx_figures(expected: dict[int, Any]) -> Any:
    return {key: pytest.approx(value) for key, value in expected.items()}


# --- run times ----------------------------------------------------------------------------------


@pytest.mark.parametrize("files", [SEED, GENERATED], ids=["seed", "generated"])
def test_run_times_per_user_per_compound_and_overall(
    client: Client, files: tuple[bytes, bytes, bytes]
) -> None:
    expected = load_files(client, files)
    everyone = sorted(expected.users)
    reports = list(client.experiments.iter_user_reports(page_size=7))
    assert user_figures(reports) == approx_figures(expected.user_run_times(everyone))
    assert client.experiments.get_user_report(everyone[0]).total_run_time == pytest.approx(
        expected.user_run_times(everyone)[everyone[0]][1]
    )
    report = client.experiments.get_report()
    users, active, experiments, total, average = expected.totals(everyone)
    assert (report.user_count, report.active_user_count, report.experiment_count) == (
        users,
        active,
        experiments,
    )
    assert report.total_run_time == pytest.approx(total)
    assert report.average_run_time == pytest.approx(average)
    compounds = list(client.experiments.iter_compound_reports(page_size=3))
    assert [c.compound.id for c in compounds] == expected.compounds
    assert {
        c.compound.id: (c.experiment_count, c.average_run_time) for c in compounds
    } == approx_figures(expected.compound_run_times(everyone))


def test_seed_run_times_by_hand(client: Client) -> None:
    """The seed's figures, worked out by hand: Alice ran 10 + 15; compound 1 is in experiments
    1, 3, 5, 7, 9 and 11 (10 + 20 + 30 + 40 + 50 + 60 = 210, over 6)."""
    load(client)
    alice = client.experiments.get_user_report(1)
    assert (alice.total_run_time, alice.average_run_time) == (25, 12.5)
    report = client.experiments.get_report()
    assert (report.total_run_time, report.average_run_time) == (385, 35)
    first = next(client.experiments.iter_compound_reports())
    assert (first.compound.name, first.experiment_count, first.average_run_time) == (
        "Compound A",
        6,
        35,
    )


# --- filters ------------------------------------------------------------------------------------

D = datetime.date
FILTERS: list[tuple[int | None, D | None, D | None]] = [
    (3, None, None),
    (None, D(2022, 6, 1), D(2023, 3, 31)),
    (None, D(2023, 1, 1), None),
    (None, None, D(2022, 2, 1)),
    (2, D(2022, 6, 1), D(2023, 6, 30)),
    (8, None, None),  # a compound nobody used: nobody
    (None, D(2030, 1, 1), None),  # nobody signed up then
]


@pytest.mark.parametrize("compound, start, end", FILTERS)
def test_filters_narrow_the_report_the_user_rows_and_the_compound_figures(
    client: Client, compound: int | None, start: D | None, end: D | None
) -> None:
    expected = load_files(client, GENERATED)
    chosen = expected.selected(compound, start, end)
    options: dict[str, Any] = {
        "compound_id": compound,
        "signup_date_start": start,
        "signup_date_end": end,
    }
    reports = list(client.experiments.iter_user_reports(page_size=4, **options))
    assert [r.user_id for r in reports] == chosen
    assert user_figures(reports) == approx_figures(expected.user_run_times(chosen))
    report = client.experiments.get_report(**options)
    users, active, experiments, total, average = expected.totals(chosen)
    assert (report.user_count, report.active_user_count, report.experiment_count) == (
        users,
        active,
        experiments,
    )
    assert report.compound_count == len(expected.compounds)  # the data set's, unfiltered
    assert report.total_run_time == pytest.approx(total)
    assert report.average_run_time == pytest.approx(average)
    assert report.average_experiments_per_user == pytest.approx(experiments / users if users else 0)
    compounds = list(client.experiments.iter_compound_reports(page_size=5, **options))
    assert {
        c.compound.id: (c.experiment_count, c.average_run_time) for c in compounds
    } == approx_figures(expected.compound_run_times(chosen))


def test_dates_may_be_given_as_text_and_include_both_days(client: Client) -> None:
    load(client)  # the seed's users signed up on the 1st of months 1 to 10 of 2023
    reports = client.experiments.list_user_reports(
        signup_date_start="2023-03-01", signup_date_end="2023-05-01"
    )
    assert [r.name for r in reports.user_reports] == ["Carol", "Dave", "Eve"]


@pytest.mark.parametrize(
    "options, field",
    [
        ({"signup_date_start": "2023-02-30"}, "filter.signup_date_start"),
        ({"signup_date_end": "1 May 2023"}, "filter.signup_date_end"),
        (
            {"signup_date_start": "2023-05-02", "signup_date_end": "2023-05-01"},
            "filter.signup_date_end",
        ),
        ({"compound_id": 0}, "filter.compound_id"),
    ],
)
def test_invalid_filters_are_refused_with_the_field(
    client: Client, options: dict[str, Any], field: str
) -> None:
    load(client)
    for call in (client.experiments.get_report, client.experiments.list_user_reports):
        with pytest.raises(QuartetError) as caught:
            call(**options)
        assert (caught.value.code, caught.value.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "FIELD_INVALID",
        )
        assert field in [v.field for v in caught.value.field_violations]


def test_a_page_token_is_bound_to_its_filter(client: Client) -> None:
    load(client)
    page = client.experiments.list_user_reports(page_size=2, compound_id=1)
    assert page.next_page_token
    with pytest.raises(QuartetError) as caught:
        client.experiments.list_user_reports(page_token=page.next_page_token, compound_id=2)
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "PAGE_TOKEN_INVALID",
    )


# --- exports ------------------------------------------------------------------------------------


def test_the_report_and_user_rows_are_written_as_csv_and_json(
    client: Client, tmp_path: Path
) -> None:
    expected = load_files(client, GENERATED)
    options: dict[str, Any] = {"signup_date_start": D(2022, 6, 1), "compound_id": 2}
    chosen = expected.selected(2, D(2022, 6, 1))
    per_user = expected.user_run_times(chosen)

    written = client.experiments.write_user_reports(tmp_path / "users.csv", page_size=3, **options)
    assert written == len(chosen)
    with open(tmp_path / "users.csv", newline="") as file:
        table = list(csv.DictReader(file))
    assert [int(row["user_id"]) for row in table] == chosen
    assert {
        int(row["user_id"]): (
            int(row["experiment_count"]),
            float(row["total_run_time"]),
            float(row["average_run_time"]),
        )
        for row in table
    } == approx_figures(per_user)
    assert {"favourite_compound_id", "favourite_compound_name", "signup_date"} <= set(table[0])

    out = io.StringIO()
    client.experiments.write_user_reports(out, "json", **options)
    objects = json.loads(out.getvalue())
    assert [(o["user_id"], o["experiment_count"]) for o in objects] == [
        (user, per_user[user][0]) for user in chosen
    ]
    assert list(objects[0]) == list(table[0])  # the same columns either way

    report = client.experiments.write_report(tmp_path / "report.json", "json", **options)
    figures = json.loads((tmp_path / "report.json").read_text())
    assert figures["experiment_count"] == report.experiment_count == expected.totals(chosen)[2]
    assert figures["total_run_time"] == pytest.approx(expected.totals(chosen)[3])
    assert figures["import_id"] == report.import_id and figures["publish_time"].endswith("Z")
    client.experiments.write_report(tmp_path / "report.csv", **options)
    with open(tmp_path / "report.csv", newline="") as file:
        (row,) = csv.DictReader(file)
    assert int(row["user_count"]) == len(chosen)


def test_users_without_a_favourite_export_empty_cells(client: Client) -> None:
    load(client, b"user_id,name,email,signup_date\n1,Ann,a@example.com,2023-01-01", b"", b"")
    out = io.StringIO()
    client.experiments.write_user_reports(out)
    (row,) = csv.DictReader(io.StringIO(out.getvalue()))
    assert (row["favourite_compound_id"], row["experiment_count"]) == ("", "0")
    out = io.StringIO()
    client.experiments.write_user_reports(out, "json")
    assert json.loads(out.getvalue())[0]["favourite_compound_name"] is None


def test_an_unknown_format_fails_before_writing_or_calling(client: Client, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="csv, json"):
        client.experiments.write_user_reports(tmp_path / "users.xml", "xml")  # type: ignore[arg-type]
    assert not (tmp_path / "users.xml").exists()


def test_the_async_client_filters_and_exports_too(
    client: Client, target: str, admin: Principal
) -> None:
    expected = load_files(client, GENERATED)
    token = admin.client.metadata[0][1].removeprefix("Bearer ")

    async def main() -> tuple[list[int], str, int]:
        async with quartet_aio.Client(target, token=token) as reader:
            users = [
                r.user_id
                async for r in reader.experiments.iter_user_reports(
                    compound_id=5, signup_date_end="2023-01-01"
                )
            ]
            out = io.StringIO()
            await reader.experiments.write_user_reports(out, compound_id=5)
            imports = [i async for i in reader.experiments.iter_imports()]
            return users, out.getvalue(), len(imports)

    users, text, imports = asyncio.run(main())
    assert users == expected.selected(5, None, D(2023, 1, 1))
    assert len(list(csv.DictReader(io.StringIO(text)))) == len(expected.selected(5))
    assert imports == 1


# --- import history -----------------------------------------------------------------------------


def test_each_import_is_recorded_published_or_refused(client: Client, admin: Principal) -> None:
    assert list(client.experiments.iter_imports()) == []
    assert client.experiments.get_report().import_id == 0
    assert not client.experiments.get_report().HasField("publish_time")
    before = datetime.datetime.now(datetime.UTC)
    load(client)
    with pytest.raises(QuartetError) as caught:
        load(client, experiments=SEED_EXPERIMENTS + b"\n12,\t99,\t1,\t5\n13,\t1,\t7,\tx")
    problems = int(caught.value.metadata["problem_count"])
    load(client, *GENERATED)
    after = datetime.datetime.now(datetime.UTC)

    newest, refused, first = client.experiments.iter_imports()
    assert [i.id for i in (newest, refused, first)] == [3, 2, 1]  # newest first
    assert (first.user_rows, first.compound_rows, first.experiment_rows) == (10, 3, 11)
    assert (first.outcome, first.problem_count) == (pb.IMPORT_OUTCOME_PUBLISHED, 0)
    assert (refused.outcome, refused.problem_count) == (pb.IMPORT_OUTCOME_REFUSED, problems)
    assert problems == 3  # an unknown user, an unknown compound, a run time that is no number
    assert (refused.user_rows, refused.experiment_rows) == (10, 13)
    assert (newest.user_rows, newest.compound_rows, newest.experiment_rows) == (60, 8, 200)
    for record in (newest, refused, first):
        assert record.caller == f"account:{admin.id}"
        start, finish = (
            record.start_time.ToDatetime(datetime.UTC),
            record.finish_time.ToDatetime(datetime.UTC),
        )
        assert before - datetime.timedelta(seconds=1) <= start <= finish <= after

    report = client.experiments.get_report()
    assert report.import_id == newest.id
    assert report.publish_time == newest.finish_time


def test_a_refused_import_leaves_the_report_on_the_published_one(client: Client) -> None:
    load(client)
    published = client.experiments.get_report()
    with pytest.raises(QuartetError):
        load(client, users=b"user_id,name,email,signup_date\n1,Ann,not a date,2023-13-01")
    assert client.experiments.get_report() == published
    refused = next(client.experiments.iter_imports())
    assert (refused.id, refused.outcome) == (published.import_id + 1, pb.IMPORT_OUTCOME_REFUSED)


def test_a_stream_without_a_verdict_is_not_recorded(client: Client) -> None:
    """A stream that breaks the protocol never reached the files' checks."""
    requests = [
        pb.ImportExperimentDataRequest(file=pb.DATA_FILE_USERS, data=SEED_USERS),
        pb.ImportExperimentDataRequest(file=pb.DATA_FILE_COMPOUNDS, data=SEED_COMPOUNDS),
        pb.ImportExperimentDataRequest(file=pb.DATA_FILE_USERS, data=SEED_USERS),
    ]
    with pytest.raises(QuartetError) as caught:
        list(raw_import(client, requests))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(client.experiments.iter_imports()) == []


def test_imports_come_in_pages_newest_first(client: Client) -> None:
    for _ in range(5):
        load(client)
    first = client.experiments.list_imports(page_size=2)
    assert [i.id for i in first.imports] == [5, 4]
    ids = [i.id for i in client.experiments.iter_imports(page_size=2)]
    assert ids == [5, 4, 3, 2, 1]
    rest = client.experiments.list_imports(page_size=2, page_token=first.next_page_token)
    assert [i.id for i in rest.imports] == [3, 2]


def test_analysts_list_imports_and_users_may_not(
    client: Client, sign_in: Callable[..., Principal], anonymous: Client
) -> None:
    load(client)
    assert [i.id for i in sign_in("analyst").client.experiments.iter_imports()] == [1]
    for caller, code in [
        (sign_in("user").client, grpc.StatusCode.PERMISSION_DENIED),
        (anonymous, grpc.StatusCode.UNAUTHENTICATED),
    ]:
        for call in (caller.experiments.list_imports, caller.experiments.list_compound_reports):
            with pytest.raises(QuartetError) as caught:
                call()
            assert caught.value.code == code
