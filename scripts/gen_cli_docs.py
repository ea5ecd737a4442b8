"""Render docs/cli.md from the `quartet` command's own help: every command, in tree order.

scripts/gen_protos.py writes it with the other generated files, so that the freshness test
(tests/test_generated.py) fails when a command's help changes and docs/cli.md was not
regenerated. Run `python scripts/gen_protos.py` to refresh it.
"""

from __future__ import annotations

from collections.abc import Iterator

import click

from quartet.cli.main import quartet

WIDTH = 100

PREAMBLE = """\
# The `quartet` command

Generated from the command's help by scripts/gen_cli_docs.py (through scripts/gen_protos.py); do
not edit.

Install it with the `cli` extra: `pip install "quartet[cli]"` (the client side: click and rich
on top of the SDK), or `pip install "quartet[server,cli]"` to run the server too (`quartet
server ...`). In a checkout, `scripts/bootstrap` installs both into `.venv/bin/quartet`.
`pip install quartet` alone stays the lean SDK.

## Conventions

- **Server and credentials.** `--server HOST:PORT` or `QUARTET_SERVER`, else the server logged in
  to last, else `localhost:50051`. `quartet login` keeps the account's tokens in
  `$XDG_CONFIG_HOME/quartet/credentials.json` (`~/.config/quartet/`; file mode 0600, directory
  0700), one login per server, and every later command refreshes them as needed. Scripts and
  event senders give an API key or access token with `--token` or `QUARTET_TOKEN` instead.
  `--tls` or `--ca-file PEM` for a server with TLS (kept with the login).
- **Output.** A table for people by default. `--json` (`--format json`) prints protobuf's JSON
  mapping of the messages with their proto field names, every field present, as in
  docs/api.md: one object for one resource, an array for a list (int64 values are strings,
  timestamps RFC 3339, enums their names, as the mapping says). Lists and reports also take
  `--format csv`: a header row, then the table's columns. `events tail --json` prints JSON
  Lines, one event per line. These formats are stable: fields are only ever added.
- **Lists** walk the pages for you and print at most `--limit` items (100; `--limit 0`: every
  one); when there were more, a note on stderr says so. Times given to `--since` and `--until`
  are ISO 8601 dates or times, local when they name no zone.
- **Progress** (events send, experiments import) is drawn on stderr when it is a terminal, and
  never otherwise.
- **Exit status**: 0 done; 1 failed (the server's own fault); 2 usage error (a bad flag or
  argument, an unreadable file, a line that is not an event); 3 refused by the server (invalid,
  not found, already exists, not signed in or not allowed; also a rejected event or an FSA not
  answered); 4 unavailable (no server there, overloaded, timed out: try again); 130
  interrupted. A refusal prints one block on stderr: the status and reason, the message, then
  every field violation (`field: description (REASON)`), never a traceback.
- **Shell completion**: `quartet completion bash|zsh|fish` prints the script to load.
"""


def _commands(
    command: click.Command, parent: click.Context | None, name: str
) -> Iterator[tuple[str, click.Context]]:
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    context = click.Context(command, info_name=name, parent=parent, **settings)
    yield context.command_path, context
    if isinstance(command, click.Group):
        for sub in command.list_commands(context):
            child = command.get_command(context, sub)
            if child is not None and not child.hidden:
                yield from _commands(child, context, sub)


def render() -> str:
    sections = [PREAMBLE]
    for path, context in _commands(quartet, None, "quartet"):
        level = "#" * min(2 + path.count(" "), 4)
        sections.append(f"{level} `{path}`\n\n```text\n{context.get_help()}\n```\n")
    return "\n".join(sections)


if __name__ == "__main__":
    print(render(), end="")
