"""Server settings, read once from the environment; command-line flags override them."""

from __future__ import annotations

import math
import os
import secrets
import stat
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from quartet.storage import DEFAULT_SQLITE_PATH, default_database_url

T = TypeVar("T")

MIN_SECRET_LENGTH = 32
# A production secret must also look random. Compressed with DEFLATE, 32 random characters take
# at least 27 bytes (measured: 20,000 secrets each of hex, decimal digits and base64), while
# repetitions shrink to a few bytes ("a" * 32: 5, "password" * 4: 13, "change-me" * 3 + "now": 18).
MIN_SECRET_COMPRESSED_BYTES = 24
# And use more than a handful of symbols (32 random hex digits use at least 9 of their 16).
MIN_SECRET_DISTINCT_CHARACTERS = 8
GOOD_SECRET_COMMAND = 'python -c "import secrets; print(secrets.token_urlsafe(48))"'


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Everything the server is configured with. Each field's metadata names its variable."""

    database_url: str = field(
        default_factory=default_database_url, metadata={"env": "DATABASE_URL"}
    )
    host: str = field(default="127.0.0.1", metadata={"env": "QUARTET_HOST"})
    port: int = field(default=50051, metadata={"env": "QUARTET_PORT"})
    # Server processes sharing the port (SO_REUSEPORT); by default one per core available.
    workers: int = field(default_factory=lambda: cpu_count(), metadata={"env": "QUARTET_WORKERS"})
    # The Connect protocol (JSON or binary over HTTP/1.1 and h2c, GET for reads) and gRPC-Web on
    # this port, beside gRPC (same host, every worker); 0 serves none. See docs/http.md.
    http_port: int = field(default=0, metadata={"env": "QUARTET_HTTP_PORT"})
    # Calls per second (a burst of twice as many allowed) that one publishable key, and one
    # client address using any publishable key, may make on the HTTP port, per worker: web pages
    # show the key to anyone, so these bound what a copied key can send.
    http_calls_per_key: int = field(default=1000, metadata={"env": "QUARTET_HTTP_CALLS_PER_KEY"})
    http_calls_per_address: int = field(
        default=20, metadata={"env": "QUARTET_HTTP_CALLS_PER_ADDRESS"}
    )
    # Prometheus metrics over HTTP on this port (same host); 0 serves none.
    metrics_port: int = field(default=0, metadata={"env": "QUARTET_METRICS_PORT"})
    # Signed-in unary calls handled at once per worker; more are refused with RESOURCE_EXHAUSTED.
    # The budgets below are kept apart from it (quartet.server.budgets), so that anonymous calls
    # and streams can never take its place.
    max_concurrent_rpcs: int = field(default=1000, metadata={"env": "QUARTET_MAX_CONCURRENT_RPCS"})
    # Anonymous unary calls (health checks, login) at once per worker.
    max_anonymous_calls: int = field(default=200, metadata={"env": "QUARTET_MAX_ANONYMOUS_CALLS"})
    # Anonymous streams (health watches, reflection) open at once per worker.
    max_anonymous_streams: int = field(
        default=500, metadata={"env": "QUARTET_MAX_ANONYMOUS_STREAMS"}
    )
    # Signed-in streams open at once per worker, and per account or application.
    max_streams: int = field(default=1000, metadata={"env": "QUARTET_MAX_STREAMS"})
    max_streams_per_caller: int = field(
        default=100, metadata={"env": "QUARTET_MAX_STREAMS_PER_CALLER"}
    )
    # Calls one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    max_streams_per_connection: int = field(
        default=100, metadata={"env": "QUARTET_MAX_STREAMS_PER_CONNECTION"}
    )
    # Bytes of replies built but not yet delivered, per worker: a client that does not read holds
    # its reply until it goes away.
    max_reply_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"env": "QUARTET_MAX_REPLY_BYTES"}
    )
    # A page of events stops early once its items would pass this size, next_page_token going
    # on from there: well under the 4 MiB that gRPC clients accept by default.
    max_page_bytes: int = field(default=2 * 1024 * 1024, metadata={"env": "QUARTET_MAX_PAGE_BYTES"})
    # The largest message accepted or sent (a batch of 1000 events needs a few MiB).
    max_message_bytes: int = field(
        default=16 * 1024 * 1024, metadata={"env": "QUARTET_MAX_MESSAGE_BYTES"}
    )
    db_threads: int = field(default=8, metadata={"env": "QUARTET_DB_THREADS"})
    grace_seconds: float = field(default=10.0, metadata={"env": "QUARTET_GRACE_SECONDS"})
    log_level: str = field(default="INFO", metadata={"env": "QUARTET_LOG_LEVEL"})
    log_format: str = field(default="auto", metadata={"env": "QUARTET_LOG_FORMAT"})
    environment: str = field(default="development", metadata={"env": "QUARTET_ENV"})
    # The key that signs access and refresh tokens: from QUARTET_SECRET or the file named by
    # QUARTET_SECRET_FILE. Never printed (repr=False).
    secret: str = field(
        default="", repr=False, metadata={"env": "QUARTET_SECRET", "file": "QUARTET_SECRET_FILE"}
    )
    access_token_minutes: float = field(
        default=15.0, metadata={"env": "QUARTET_ACCESS_TOKEN_MINUTES"}
    )
    refresh_token_days: float = field(default=7.0, metadata={"env": "QUARTET_REFRESH_TOKEN_DAYS"})
    tls_cert_file: str = field(default="", metadata={"env": "QUARTET_TLS_CERT_FILE"})
    tls_key_file: str = field(default="", metadata={"env": "QUARTET_TLS_KEY_FILE"})
    # Events of a category and name without a registered schema: "reject" (kept among the
    # rejected events, reason EVENT_TYPE_UNKNOWN) or "accept" (stored unvalidated).
    unknown_event_types: str = field(
        default="reject", metadata={"env": "QUARTET_UNKNOWN_EVENT_TYPES"}
    )
    event_clock_skew_seconds: float = field(
        default=60.0, metadata={"env": "QUARTET_EVENT_CLOCK_SKEW_SECONDS"}
    )
    max_event_bytes: int = field(default=65536, metadata={"env": "QUARTET_MAX_EVENT_BYTES"})
    # Events are kept this many days after they occurred, rejected events after they were
    # rejected; 0 keeps them forever. (On PostgreSQL a week goes at once, up to 7 days later.)
    event_retention_days: float = field(
        default=0.0, metadata={"env": "QUARTET_EVENT_RETENTION_DAYS"}
    )
    # The largest batch of events (one SendEvents request, or one message of a stream), so that a
    # too large one is refused with details instead of gRPC's bare RESOURCE_EXHAUSTED at
    # max_message_bytes. The SDK splits its batches to stay under the default.
    max_batch_bytes: int = field(
        default=8 * 1024 * 1024, metadata={"env": "QUARTET_MAX_BATCH_BYTES"}
    )
    # Under load, how long the event writer waits after the first event of a transaction for
    # those right behind it, so that one commit serves them all (0: never waits).
    event_commit_delay_ms: float = field(
        default=3.0, metadata={"env": "QUARTET_EVENT_COMMIT_DELAY_MS"}
    )
    # A JSON file of event types to register at start-up: [{"category", "name", "schema"}].
    event_types_file: str = field(default="", metadata={"env": "QUARTET_EVENT_TYPES_FILE"})
    # Self sign-up: "open" (anyone may CreateAccount a user) or "closed" (only admins create
    # accounts); unset means closed in production and open in development.
    signup: str = field(default="", metadata={"env": "QUARTET_SIGNUP"})
    # Login throttling (OWASP ASVS v4 2.2.1, v5 6.3: a soft lockout with growing delays). After
    # this many failures in a row for one email (registered or not), each further attempt waits
    # login_delay_seconds, doubled at each further failure, up to login_max_delay_seconds.
    login_failures_per_account: int = field(
        default=5, metadata={"env": "QUARTET_LOGIN_FAILURES_PER_ACCOUNT"}
    )
    # The same per client address (failed logins and sign-ups that hit a taken email, any email);
    # 0 turns it off (behind a proxy every client has the proxy's address).
    login_failures_per_address: int = field(
        default=100, metadata={"env": "QUARTET_LOGIN_FAILURES_PER_ADDRESS"}
    )
    login_delay_seconds: float = field(default=1.0, metadata={"env": "QUARTET_LOGIN_DELAY_SECONDS"})
    login_max_delay_seconds: float = field(
        default=300.0, metadata={"env": "QUARTET_LOGIN_MAX_DELAY_SECONDS"}
    )
    # A key's failures are forgotten once it has had none for this long.
    login_failure_window_seconds: float = field(
        default=3600.0, metadata={"env": "QUARTET_LOGIN_FAILURE_WINDOW_SECONDS"}
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from environment variables, defaults for the rest."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            if environ.get(name):
                values[f.name] = _cast(name, environ[name], _CASTS[str(f.type)])
            file_variable = f.metadata.get("file")
            if file_variable and environ.get(file_variable):
                values[f.name] = _read(file_variable, environ[file_variable])
        return cls(**values).validated()

    def validated(self) -> Settings:
        """self, or SettingsError naming the first unusable value."""
        if not all(0 <= port <= 65535 for port in (self.port, self.metrics_port, self.http_port)):
            raise SettingsError("ports must be between 0 and 65535")
        if self.http_calls_per_key < 1 or self.http_calls_per_address < 1:
            raise SettingsError("http_calls_per_key and http_calls_per_address must be at least 1")
        if self.workers < 1 or self.max_concurrent_rpcs < 1 or self.max_message_bytes < 1024:
            raise SettingsError(
                "workers and max_concurrent_rpcs must be at least 1, max_message_bytes 1024"
            )
        if min(self.budgets) < 1 or self.max_page_bytes < 1:
            raise SettingsError("call budgets and max_page_bytes must be at least 1")
        if (
            self.max_page_bytes > self.max_message_bytes
            or self.max_page_bytes > self.max_reply_bytes
        ):
            raise SettingsError(
                "max_page_bytes must not exceed max_message_bytes nor max_reply_bytes"
            )
        if self.db_threads < 1:
            raise SettingsError("db_threads must be at least 1")
        if self.grace_seconds < 0:
            raise SettingsError("grace_seconds must not be negative")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError("log_level must be DEBUG, INFO, WARNING or ERROR")
        if self.log_format not in ("auto", "json", "text"):
            raise SettingsError("log_format must be auto, json or text")
        if self.environment not in ("development", "production"):
            raise SettingsError("QUARTET_ENV must be development or production")
        if self.environment == "production":
            problem = secret_problem(self.secret)
            if problem is not None:
                raise SettingsError(
                    f"in production QUARTET_SECRET (or QUARTET_SECRET_FILE) must hold at least "
                    f"{MIN_SECRET_LENGTH} random characters, and this one {problem}; make one "
                    f"with `{GOOD_SECRET_COMMAND}`"
                )
        if self.signup not in ("", "open", "closed"):
            raise SettingsError("QUARTET_SIGNUP must be open or closed")
        if self.login_failures_per_account < 1 or self.login_failures_per_address < 0:
            raise SettingsError(
                "QUARTET_LOGIN_FAILURES_PER_ACCOUNT must be at least 1, "
                "QUARTET_LOGIN_FAILURES_PER_ADDRESS at least 0 (0: no limit per address)"
            )
        if not 0 < self.login_delay_seconds <= self.login_max_delay_seconds:
            raise SettingsError(
                "QUARTET_LOGIN_DELAY_SECONDS must be positive and at most "
                "QUARTET_LOGIN_MAX_DELAY_SECONDS"
            )
        if self.login_failure_window_seconds < self.login_max_delay_seconds:
            raise SettingsError(
                "QUARTET_LOGIN_FAILURE_WINDOW_SECONDS must be at least "
                "QUARTET_LOGIN_MAX_DELAY_SECONDS, or a key's count would be forgotten while it "
                "waits"
            )
        if self.access_token_minutes <= 0 or self.refresh_token_days <= 0:
            raise SettingsError("token lifetimes must be positive")
        if self.unknown_event_types not in ("reject", "accept"):
            raise SettingsError("QUARTET_UNKNOWN_EVENT_TYPES must be reject or accept")
        if self.event_clock_skew_seconds < 0 or self.max_event_bytes < 1:
            raise SettingsError("the event clock skew and size limit must be positive")
        if self.event_retention_days < 0:
            raise SettingsError("QUARTET_EVENT_RETENTION_DAYS must be 0 (forever) or more")
        if self.max_batch_bytes < 1:
            raise SettingsError("max_batch_bytes must be positive")
        if not 0 <= self.event_commit_delay_ms <= 1000:
            raise SettingsError("QUARTET_EVENT_COMMIT_DELAY_MS must be between 0 and 1000")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise SettingsError("TLS needs both a certificate file and a key file")
        return self

    @property
    def signup_open(self) -> bool:
        """Whether anyone may create an account (QUARTET_SIGNUP, by default open but in
        production)."""
        if self.signup:
            return self.signup == "open"
        return self.environment != "production"

    @property
    def budgets(self) -> tuple[int, ...]:
        """The per-worker call budgets and limits, for validation."""
        return (
            self.max_anonymous_calls,
            self.max_anonymous_streams,
            self.max_streams,
            self.max_streams_per_caller,
            self.max_streams_per_connection,
            self.max_reply_bytes,
        )

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    @property
    def address(self) -> str:
        """host:port in the form gRPC binds (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# Field annotations are strings under `from __future__ import annotations`.
_CASTS: dict[str, Callable[[str], Any]] = {"str": str, "int": int, "float": float}


def secret_problem(secret: str) -> str | None:
    """Why secret is obviously not random enough to sign tokens with, or None.

    A simple rule, not a proof of randomness: long enough, enough distinct characters, and
    incompressible (DEFLATE finds repetitions of every length, "a" * 32 and "password" * 4 alike).
    """
    if len(secret) < MIN_SECRET_LENGTH:
        return f"has {len(secret)}"
    distinct = len(set(secret))
    if distinct < MIN_SECRET_DISTINCT_CHARACTERS:
        return f"uses only {distinct} distinct characters"
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw DEFLATE: no header to discount
    compressed = len(compressor.compress(secret.encode()) + compressor.flush())
    if compressed < MIN_SECRET_COMPRESSED_BYTES:
        return (
            f"compresses to {compressed} bytes (random text of {MIN_SECRET_LENGTH} characters "
            f"does not go below {MIN_SECRET_COMPRESSED_BYTES}): it repeats itself"
        )
    return None


SECRET_FILE_NAME = "secret"


def data_directory(database_url: str) -> Path:
    """Where the server keeps files beside its data: the SQLite database's directory, or for
    another database quartet's directory under XDG_DATA_HOME (~/.local/share/quartet)."""
    parts = urlsplit(database_url)
    if parts.scheme == "sqlite" and parts.path[1:] not in ("", ":memory:"):
        return Path(parts.path[1:]).expanduser().parent
    return DEFAULT_SQLITE_PATH.parent


def development_secret(database_url: str) -> tuple[str, Path, bool]:
    """(secret, its file, whether it was just made): the token secret development keeps in the
    data directory (file mode 0600), made on first use, so that tokens survive a restart."""
    path = data_directory(database_url) / SECRET_FILE_NAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{SECRET_FILE_NAME}.{os.getpid()}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(draft, path)  # atomic, and refused if another server made one meanwhile
        except FileExistsError:
            pass
        finally:
            draft.unlink()
        made = True
    else:
        made = False
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise SettingsError(f"{path} may be read by others: make it private with chmod 600")
    secret = path.read_text().strip()
    problem = secret_problem(secret)
    if problem is not None:
        raise SettingsError(f"the secret in {path} {problem}; delete the file to make another")
    return secret, path, made


def cpu_count() -> int:
    """The cores this process may use: those it may run on (its affinity), no more than a
    cgroup CPU quota allows (a container's or a Kubernetes pod's CPU limit). A pod limited to 2
    CPUs on a 64-core node would otherwise start 64 workers, each throttled."""
    cores = len(os.sched_getaffinity(0))
    return min(cores, cgroup_cpu_limit() or cores)


def cgroup_cpu_limit(
    root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> int | None:
    """The CPUs the tightest cgroup v2 quota (`cpu.max`) on this process's path to the root
    allows, rounded up (1.5 CPUs: 2 workers); None where there is none (or no cgroup v2)."""
    try:
        path = next(line[3:] for line in membership.read_text().splitlines() if line[:3] == "0::")
    except (OSError, StopIteration):
        return None
    folder, limits = root / path.lstrip("/"), []
    for candidate in [folder, *folder.parents]:
        try:
            quota, period = (candidate / "cpu.max").read_text().split()
            if quota != "max":
                limits.append(max(1, math.ceil(int(quota) / int(period))))
        except (OSError, ValueError):
            pass  # no controller file here, or one that is not what the kernel writes
        if candidate == root:
            break
    return min(limits, default=None)


def _read(name: str, path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise SettingsError(f"{name}={path!r} cannot be read: {exc.strerror}") from None


def _cast(name: str, raw: str, cast: Callable[[str], T]) -> T:
    try:
        return cast(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid value") from None
