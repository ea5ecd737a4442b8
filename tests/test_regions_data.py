"""The packaged regions data: the shipped files, every correction, the checks, and loading it."""

from __future__ import annotations

import collections
import hashlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import peewee
import pytest

from quartet import storage
from quartet.storage import regions
from quartet.storage.regions import dataset, fixes

DATA = Path(dataset.__file__).resolve().parent.parent / "data" / "regions"
TABLES = ["region", "province", "health_region", "fsa", "fsa_health_region"]


@pytest.fixture(scope="module")
def data() -> regions.Dataset:
    return regions.packaged()


def raw_rows(name: str) -> list[dict[str, str]]:
    return dataset._rows(DATA / name)


# --- the files ------------------------------------------------------------------------------


def test_shipped_files_are_the_sources_byte_for_byte() -> None:
    provenance = (DATA / "PROVENANCE.md").read_text()
    listed = dict(re.findall(r"\| `([\w.]+\.csv)` \|.*\| `([0-9a-f]{64})` \|", provenance))
    shipped = {p.name for p in DATA.glob("*.csv")}
    assert (
        set(listed)
        == shipped
        == {"FSA_HR2018.csv", "hr_websites.csv", "Province.csv", "Region.csv"}
    )
    for name, checksum in listed.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == checksum, name
    assert b"\r\n" in (DATA / "FSA_HR2018.csv").read_bytes()  # git kept the CRLF


def test_the_dataset_is_read_through_the_package_not_the_checkout() -> None:
    assert dataset.DATA.joinpath("FSA_HR2018.csv").is_file()
    assert "shared" not in str(dataset.DATA)


# --- what the data holds --------------------------------------------------------------------


def test_counts(data: regions.Dataset) -> None:
    assert len(data.regions) == 6
    assert len(data.provinces) == 13
    assert len(data.health_regions) == 92
    assert len(data.fsa_parts) == 1956
    assert len(data.fsa_provinces) == 1636
    per_fsa = collections.Counter(part.fsa for part in data.fsa_parts)
    assert collections.Counter(per_fsa.values()) == {1: 1393, 2: 190, 3: 35, 4: 14, 5: 3, 7: 1}
    assert sum(1 for n in per_fsa.values() if n > 1) == 243
    assert [fsa for fsa, n in per_fsa.items() if n == 7] == ["N0B"]
    assert sum(1 for part in data.fsa_parts if part.estimated_population is None) == 136


def test_every_health_region_but_nunavik_has_fsas(data: regions.Dataset) -> None:
    with_fsas = {part.hr_uid for part in data.fsa_parts}
    assert {hr.hr_uid for hr in data.health_regions} - with_fsas == {2417}


def test_health_regions_per_province(data: regions.Dataset) -> None:
    alpha = {p.geo_code: p.alpha_code for p in data.provinces}
    counts = collections.Counter(alpha[hr.province_geo_code] for hr in data.health_regions)
    assert counts == {
        "ON": 34, "QC": 18, "NB": 7, "SK": 6, "BC": 5, "MB": 5, "AB": 5, "NL": 4, "NS": 4,
        "PE": 1, "YT": 1, "NT": 1, "NU": 1,
    }  # fmt: skip


# --- each correction (fixes.py), seen against the raw files -----------------------------------


def test_pseudo_regions_are_dropped(data: regions.Dataset) -> None:
    assert {r["id"] for r in raw_rows("Region.csv")} >= {"99"}
    assert {r["geo_code"] for r in raw_rows("Province.csv")} >= {"99"}
    assert {r["HR_UID"] for r in raw_rows("hr_websites.csv")} >= {"1", "99"}
    assert 99 not in {r.id for r in data.regions}
    assert "CA" not in {p.alpha_code for p in data.provinces}
    assert not {1, 99} & {hr.hr_uid for hr in data.health_regions}
    names = {r.name_en for r in data.regions} | {p.name_en for p in data.provinces}
    assert not {"Canada", "Repatriated"} & names


def test_values_are_trimmed() -> None:
    # Region.csv's Canada row reads "99, Canada, Canada".
    assert b"99, Canada, Canada" in (DATA / "Region.csv").read_bytes()
    assert all(v == v.strip() for row in raw_rows("Region.csv") for v in row.values())


def test_french_names_get_their_accents_back(data: regions.Dataset) -> None:
    raw = {r["geo_code"]: r["name_fr"] for r in raw_rows("Province.csv")}
    assert (raw["11"], raw["12"], raw["24"]) == (
        "Ile-du-Prince-Edouard",
        "Nouvelle-Ecosse",
        "Quebec",
    )
    provinces = {p.geo_code: p for p in data.provinces}
    assert provinces[11].name_fr == "Île-du-Prince-Édouard"
    assert provinces[12].name_fr == "Nouvelle-Écosse"
    assert (provinces[24].name_en, provinces[24].name_fr) == ("Quebec", "Québec")
    assert {r.id: r.name_fr for r in data.regions}[2] == "Québec"


def test_health_regions_carry_official_names_and_their_short_name(data: regions.Dataset) -> None:
    by_uid = {hr.hr_uid: hr for hr in data.health_regions}
    toronto = by_uid[3595]
    assert toronto.name_en == "City of Toronto Health Unit"
    assert toronto.name_fr == "Circonscription sanitaire de la cité de Toronto"
    assert toronto.short_name == "Toronto"
    assert by_uid[2406].short_name == "Montréal"  # accented, unlike HealthRegion.csv's
    assert by_uid[1301].name_fr == "Zone 1 (région de Moncton)"
    assert by_uid[2417].name_en == by_uid[2417].name_fr == "Région du Nunavik"
    assert sum(1 for hr in data.health_regions if hr.name_en != hr.name_fr) > 40


def test_province_spellings_are_resolved(data: regions.Dataset) -> None:
    raw = {r["HR_UID"]: r["Province"] for r in raw_rows("hr_websites.csv")}
    assert (raw["1100"], raw["6101"]) == ("PEI", "NWT")
    by_uid = {hr.hr_uid: hr.province_geo_code for hr in data.health_regions}
    assert (by_uid[1100], by_uid[6101]) == (11, 61)


def test_websites_keep_their_language_and_get_a_scheme(data: regions.Dataset) -> None:
    by_uid = {hr.hr_uid: hr for hr in data.health_regions}
    assert by_uid[3540].website_en == "http://www.ckpublichealth.com"
    assert by_uid[3595].website_fr is None  # no French page: not the English one again
    assert by_uid[2406].website_fr is not None and by_uid[2406].website_en is not None
    assert by_uid[2413].website_en == "http://www.lavalensante.com/en/covid19/"
    assert by_uid[2401].website_en is None


def test_blank_populations_stay_unknown_and_zero_stays_zero(data: regions.Dataset) -> None:
    parts = {(p.fsa, p.hr_uid): p.estimated_population for p in data.fsa_parts}
    assert parts[("B0N", 1201)] is None
    assert parts[("B0N", 1202)] == 16580
    assert parts[("M5X", 3595)] == 0


# --- the checks -------------------------------------------------------------------------------


def broken_copy(tmp_path: Path, name: str, old: str, new: str) -> Path:
    for path in DATA.glob("*.csv"):
        shutil.copyfile(path, tmp_path / path.name)
    text = (tmp_path / name).read_bytes().decode()
    assert old in text
    (tmp_path / name).write_bytes(text.replace(old, new, 1).encode())
    return tmp_path


@pytest.mark.parametrize(
    ("name", "old", "new", "message"),
    [
        ("FSA_HR2018.csv", "A0B,1011", "A0A,1011", "repeated FSA and health region"),
        ("FSA_HR2018.csv", "A0A,1011,10", "A0A,1019,10", "health region 1019 of FSA A0A"),
        ("hr_websites.csv", "3595,Ontario", "3599,Ontario", "no official name"),
        ("FSA_HR2018.csv", "A0A,1011,10", "A0A,1011,12", "is not in 12"),
        ("FSA_HR2018.csv", "A0A,1011", "A0,1011", "invalid FSA"),
        ("FSA_HR2018.csv", "Authority,8631", "Authority,many", "not a whole number"),
        ("FSA_HR2018.csv", "A0B,1011,10,Eastern Regional", "A0B,1011,10,East", "two names"),
        ("hr_websites.csv", "3595,Ontario", "3595,Ontaria", "unknown province"),
        ("hr_websites.csv", "3595,Ontario", "3595,Quebec", "province of health region 3595"),
        ("hr_websites.csv", "http://www.toronto.ca", "ftp://www.toronto.ca", "invalid website"),
        ("Province.csv", "35,35,ON", "35,35,NL", "repeated province alpha code"),
        ("Province.csv", "Ontario,Ontario,3", "Ontario,Ontario,8", "region of province 35"),
        ("Region.csv", "1,Atlantic,Atlantique", "1,Atlantic,", "every name in both languages"),
        ("Region.csv", "1,Atlantic,Atlantique", "1,Atlantic,Atlantique,extra", "wrong number"),
    ],
)
def test_inconsistent_data_is_refused(
    tmp_path: Path, name: str, old: str, new: str, message: str
) -> None:
    with pytest.raises(fixes.DatasetError, match=message):
        dataset.read(broken_copy(tmp_path, name, old, new))


def test_the_checksum_follows_the_content(tmp_path: Path, data: regions.Dataset) -> None:
    assert dataset.read(DATA).checksum == data.checksum
    changed = dataset.read(broken_copy(tmp_path, "FSA_HR2018.csv", "8631", "8632"))
    assert changed.checksum != data.checksum


# --- loading it into the database (both backends) --------------------------------------------


def table_counts(database: peewee.Database) -> dict[str, int]:
    with database.connection_context():
        return {
            table: database.execute_sql(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # type: ignore[no-untyped-call]
            for table in TABLES
        }


@pytest.fixture
def migrated(empty_database_url: str) -> Iterator[peewee.Database]:
    database = storage.open_database(empty_database_url)
    storage.migrate(database)
    yield database
    storage.close(database)


def test_migrate_loads_the_dataset(migrated: peewee.Database) -> None:
    assert table_counts(migrated) == {
        "region": 6, "province": 13, "health_region": 92, "fsa": 1636, "fsa_health_region": 1956,
    }  # fmt: skip
    with migrated.connection_context():
        row = migrated.execute_sql(  # type: ignore[no-untyped-call]
            "SELECT h.name_fr, p.alpha_code, f.estimated_population, s.checksum "
            "FROM fsa_health_region f JOIN health_region h ON h.hr_uid = f.health_region_id "
            "JOIN province p ON p.geo_code = h.province_id, region_dataset s "
            "WHERE f.fsa_id = 'B0N' AND f.health_region_id = 1201"
        ).fetchone()
    assert tuple(row) == (
        "Zone 1 - Western", "NS", None, regions.packaged().checksum,
    )  # fmt: skip


def test_loading_again_is_skipped_or_changes_nothing(migrated: peewee.Database) -> None:
    assert regions.load(migrated).skipped
    assert storage.migrate(migrated) == []
    forced = regions.load(migrated, force=True)
    assert not forced.skipped and not forced.changed
    assert forced.tables["fsa"] == regions.Changes(rows=1636, added=0, updated=0, removed=0)


def test_a_forced_load_repairs_rows_changed_by_hand(migrated: peewee.Database) -> None:
    with migrated.connection_context():
        for sql in (
            "UPDATE health_region SET name_fr = 'Toronto' WHERE hr_uid = 3595",
            "DELETE FROM fsa_health_region WHERE fsa_id = 'N0B' AND health_region_id = 3527",
            "INSERT INTO fsa (code, province_id) VALUES ('Z9Z', 35)",
            "INSERT INTO fsa_health_region VALUES ('Z9Z', 3595, 1)",
        ):
            migrated.execute_sql(sql)  # type: ignore[no-untyped-call]
    assert regions.load(migrated).skipped  # the checksum alone cannot see hand edits
    report = regions.load(migrated, force=True)
    assert report.tables["health_region"].updated == 1
    assert report.tables["fsa"].removed == 1
    assert report.tables["fsa_health_region"] == regions.Changes(1956, 1, 0, 1)
    assert table_counts(migrated)["fsa_health_region"] == 1956
    with migrated.connection_context():
        name = migrated.execute_sql(  # type: ignore[no-untyped-call]
            "SELECT name_fr FROM health_region WHERE hr_uid = 3595"
        ).fetchone()[0]
    assert name == "Circonscription sanitaire de la cité de Toronto"


def test_a_new_dataset_replaces_the_old_one(migrated: peewee.Database, tmp_path: Path) -> None:
    newer = dataset.read(
        broken_copy(tmp_path, "FSA_HR2018.csv", "Authority,8631", "Authority,9000")
    )
    report = regions.load(migrated, newer)
    assert report.changed and report.tables["fsa_health_region"].updated == 1
    assert regions.load(migrated, newer).skipped
    assert not regions.load(migrated).skipped  # back to the packaged one


def test_load_regions_command(empty_database_url: str) -> None:
    command = [sys.executable, "-m", "quartet.server", "load-regions"]
    command += ["--database-url", empty_database_url, "--verbose"]  # the log too
    first = subprocess.run(command, capture_output=True, text=True, check=True)
    again = subprocess.run(command, capture_output=True, text=True, check=True)
    # The first run's migration loads the dataset (and logs it); then each run compares every row.
    assert "fsa_health_region 1956 rows (1956 added, 0 updated, 0 removed)" in first.stderr
    assert "loaded regions dataset" not in again.stderr
    for result in (first, again):
        assert "fsa_health_region   1956 rows: 0 added, 0 updated, 0 removed" in result.stdout
