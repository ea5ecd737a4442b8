"""The event types' JSON Schemas, compiled once and kept in memory for every event checked."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
import jsonschema.exceptions
import peewee

from quartet.server.errors import text_problem
from quartet.storage import events

TEXT_LENGTH = 100  # an event type's category and name, at most


class SchemaInvalid(ValueError):
    """A schema document is not a valid JSON Schema (draft 2020-12)."""


@dataclass(frozen=True)
class Schema:
    """One version of an event type's schema.

    `accepts` is fastjsonschema's compiled check (about 1 µs per event, against about 27 µs for
    jsonschema), used on every event. `problems` uses jsonschema, slower but able to list every
    violation, and runs only for events that are rejected anyway. The two must agree on what is
    invalid, or an event could be refused by one and let through by the other: jsonschema checks
    `format` with fastjsonschema's own rules (by default it checks no format at all), and when it
    still finds nothing, `problems` reports fastjsonschema's complaint about the whole payload.
    fastjsonschema implements drafts 4 to 7 and silently ignores the keywords draft 2020-12 added,
    so a schema using any of them is checked by jsonschema alone (`_fast` is then None).
    """

    version: int
    document: dict[str, Any]
    _fast: Callable[[Any], Any] | None = field(repr=False)
    _full: jsonschema.protocols.Validator = field(repr=False)

    @classmethod
    def compile(cls, version: int, document: dict[str, Any]) -> Schema:
        try:
            jsonschema.Draft202012Validator.check_schema(document)
            fast = fastjsonschema.compile(document)
        except (jsonschema.SchemaError, fastjsonschema.JsonSchemaDefinitionException) as error:
            raise SchemaInvalid(str(getattr(error, "message", error))) from None
        dialect = document.get("$schema")
        full = jsonschema.Draft202012Validator(
            document, format_checker=_FastjsonschemaFormats(dialect)
        )
        return cls(version, document, None if _uses(document, _NEWER_KEYWORDS) else fast, full)

    def accepts(self, data: Any) -> bool:
        if self._fast is None:
            return bool(self._full.is_valid(data))
        try:
            self._fast(data)
        except fastjsonschema.JsonSchemaValueException:
            return False
        return True

    def problems(self, data: Any) -> list[tuple[str, str]]:
        """(path, message) for every violation, paths like "form.first_name" ("" for the root).

        A missing or unexpected property is reported at its own path, not its parent's.
        """
        found = []
        for error in self._full.iter_errors(data):
            path = [str(p) for p in error.absolute_path]
            names = _properties_named(error)
            message = _shortened(error.message)
            found += [(".".join([*path, name]), message) for name in names]
            if not names:
                found.append((".".join(path), message))
        if not found and self._fast is not None:  # never let a refused event through unexplained
            try:
                self._fast(data)
            except fastjsonschema.JsonSchemaValueException as error:
                found.append(("", _shortened(f"does not satisfy the schema: {error.message}")))
        return sorted(found)


# Draft 2019-09 and 2020-12 keywords that fastjsonschema does not implement (it would ignore them).
_NEWER_KEYWORDS = frozenset(
    {
        "prefixItems",
        "unevaluatedItems",
        "unevaluatedProperties",
        "dependentRequired",
        "dependentSchemas",
        "minContains",
        "maxContains",
        "$dynamicRef",
        "$dynamicAnchor",
        "$recursiveRef",
        "$recursiveAnchor",
    }
)


def _uses(document: Any, keywords: frozenset[str]) -> bool:
    """Whether any of keywords is a key anywhere in document. A property of that name counts too:
    that only costs the schema the faster check, never a wrong answer."""
    if isinstance(document, dict):
        return any(key in keywords or _uses(value, keywords) for key, value in document.items())
    if isinstance(document, list):
        return any(_uses(item, keywords) for item in document)
    return False


# jsonschema's messages quote the offending value, which can be most of a 64 KiB event; each is
# returned for every rejected event (and stored with it), so it is cut to a readable length.
_MESSAGE_LENGTH = 300


def _shortened(message: str) -> str:
    if len(message) <= _MESSAGE_LENGTH:
        return message
    return message[: _MESSAGE_LENGTH - 1] + "…"


class _FastjsonschemaFormats(jsonschema.FormatChecker):
    """Checks `format` exactly as fastjsonschema does (which formats it knows, and how), for the
    schema's dialect (`$schema`), so that jsonschema finds every format problem fastjsonschema
    refused an event for. Each format's check is compiled once, the first time it is needed."""

    def __init__(self, dialect: object) -> None:
        super().__init__(formats=())
        self._dialect = dialect if isinstance(dialect, str) else None

    def check(self, instance: object, format: str) -> None:
        try:
            _format_check(self._dialect, format)(instance)
        except fastjsonschema.JsonSchemaValueException:
            raise jsonschema.exceptions.FormatError(
                f"{instance!r} is not a valid {format!r}"
            ) from None


@functools.cache
def _format_check(dialect: str | None, format: str) -> Callable[[Any], Any]:
    schema: dict[str, Any] = {"format": format}
    if dialect is not None:
        schema["$schema"] = dialect
    return fastjsonschema.compile(schema)


def _properties_named(error: jsonschema.ValidationError) -> list[str]:
    """The properties a `required` or `additionalProperties` error is about."""
    instance, rule = error.instance, error.validator_value
    if not isinstance(instance, dict):
        return []
    if error.validator == "required" and isinstance(rule, list):
        return [p for p in rule if p not in instance and repr(p) in error.message]
    if error.validator == "additionalProperties" and rule is False:
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        return sorted(k for k in instance if k not in known and repr(k) in error.message)
    return []


# An event type looked up and not found is not looked up again for this long, so that events of
# a made-up type cost one query per batch at most this often (per worker process). A type
# registered meanwhile, anywhere, is announced, which ends this at once (forget_missing).
MISSING_SECONDS = 5.0
# Event types remembered as missing, at most; past that the memory is cleared (a sender of many
# made-up types then costs one query per batch, no more).
MISSING_SIZE = 10_000


class Registry:
    """The latest schema of every event type, by (category, name), and the types recently looked
    up and not found.

    Lookups and reloads read the database while registrations (here or announced from
    elsewhere) go on, so each takes `generation` before it reads and hands it back with what it
    read: a read older than a change this registry has seen since must not undo that change."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._schemas: dict[tuple[str, str], Schema] = {}
        self._missing: dict[tuple[str, str], float] = {}  # type -> until when it counts missing
        self._clock = clock
        self.generation = 0  # advanced by every change of a schema, and by forgetting missing ones

    def update(self, rows: Iterable[events.EventType], since: int) -> None:
        """Use these event types, every type's latest version read after `since`, from now on,
        and look up again those found missing. If the registry changed meanwhile, the rows may
        predate that change (a registration this process answered while they were read), so they
        only add newer versions; else they are taken as they are (the database may have been
        restored to an earlier state). A schema already compiled is reused."""
        if since == self.generation:
            known = self._schemas
            self._schemas = {(row.category, row.name): _compiled(row, known) for row in rows}
        else:
            for row in rows:
                self.add(row)
        self._missing.clear()
        self.generation += 1

    def unknown(self, named: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Those of these types (category, name) that are neither known nor recently found
        missing: the ones worth a lookup before their events are rejected."""
        schemas, missing = self._schemas, self._missing
        found: set[tuple[str, str]] = set()
        for key in named:
            if key in schemas or key in found or not _registrable(key):
                continue
            until = missing.get(key)
            if until is not None and until > self._clock():
                continue
            found.add(key)
        return sorted(found)

    def learn(
        self, asked: Iterable[tuple[str, str]], rows: Iterable[events.EventType], since: int
    ) -> None:
        """Use the rows a lookup of the types `asked`, read after `since`, found; remember the
        rest as missing, unless the registry changed meanwhile (one of them may have been
        registered and announced while the lookup ran)."""
        unchanged = since == self.generation
        for row in rows:
            self.add(row)
        if not unchanged:
            return
        until = self._clock() + MISSING_SECONDS
        for key in asked:
            if key not in self._schemas:
                if len(self._missing) >= MISSING_SIZE:
                    self._missing.clear()
                self._missing[key] = until

    def forget_missing(self) -> None:
        """Look every type up again (one was registered somewhere)."""
        self._missing.clear()
        self.generation += 1

    def add(self, row: events.EventType) -> None:
        """Use this version from now on, unless a later one is known already (concurrent
        registrations may finish in any order)."""
        known = self._schemas.get((row.category, row.name))
        if known is None or known.version < row.version:
            self._schemas[(row.category, row.name)] = _compiled(row, {})
            self._missing.pop((row.category, row.name), None)
            self.generation += 1

    def get(self, category: str, name: str) -> Schema | None:
        return self._schemas.get((category, name))


def _compiled(row: events.EventType, known: dict[tuple[str, str], Schema]) -> Schema:
    """The row's schema: the one known already if it is the same version of the same document."""
    document = json.loads(row.schema)
    schema = known.get((row.category, row.name))
    if schema is not None and schema.version == row.version and schema.document == document:
        return schema
    return Schema.compile(row.version, document)


def register_file(database: peewee.Database, path: Path) -> list[events.EventType]:
    """Register the event types of an operator's JSON file, a list of {"category", "name",
    "schema"} objects: each whose schema differs from its type's latest version becomes a new
    version. Running it again with the same file registers nothing. ValueError if it is invalid."""
    try:
        entries = json.loads(path.read_text())
        wanted = {(e["category"], e["name"]): e["schema"] for e in entries}
        for (category, name), schema in wanted.items():
            for text in (category, name):
                if not (
                    isinstance(text, str) and 0 < len(text.strip()) and len(text) <= TEXT_LENGTH
                ):
                    raise ValueError(f"category and name must be 1 to {TEXT_LENGTH} characters")
                if (problem := text_problem(text)) is not None:
                    raise ValueError(f"{text!r}: category and name {problem}")
            Schema.compile(0, schema)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"event types file {path}: {error}") from None
    registered = []
    with database.connection_context():
        latest = {(t.category, t.name): json.loads(t.schema) for t in events.latest_event_types()}
        for (category, name), schema in wanted.items():
            if latest.get((category, name)) != schema:
                registered.append(events.add_event_type(category, name, schema))
    return registered


def _registrable(key: tuple[str, str]) -> bool:
    """Whether CreateEventType could have stored this type: the others (a control character,
    which PostgreSQL cannot even compare, or a length out of bounds) are rejected unasked."""
    return all(0 < len(part) <= TEXT_LENGTH and text_problem(part) is None for part in key)
