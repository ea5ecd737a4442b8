"""quartet's data layer: Peewee models, the database chosen by URL, connections and migrations.

Import the domain modules (`quartet.storage.scores`, ...) for models and queries; this package
re-exports only what the server needs to open, migrate and close a database.
"""

from quartet.storage.database import (
    DEFAULT_SQLITE_PATH,
    WalCheckpointer,
    bind,
    check_files,
    close,
    default_database_url,
    open_database,
    probe_writes,
    redacted,
    unavailable,
)
from quartet.storage.errors import (
    DatabaseUnavailable,
    DeadlineExceeded,
    RecordExists,
    RecordNotFound,
)
from quartet.storage.migrate import REFERENCE_MODELS, migrate
from quartet.storage.runner import DatabaseRunner, deadline
from quartet.storage.writer import BatchWriter

__all__ = [
    "DEFAULT_SQLITE_PATH",
    "REFERENCE_MODELS",
    "BatchWriter",
    "DatabaseRunner",
    "DatabaseUnavailable",
    "DeadlineExceeded",
    "RecordExists",
    "RecordNotFound",
    "WalCheckpointer",
    "bind",
    "check_files",
    "close",
    "deadline",
    "default_database_url",
    "migrate",
    "open_database",
    "probe_writes",
    "redacted",
    "unavailable",
]
