"""The `quartet` command's root: its groups, shell completion, and how failures exit.

Exit status: 0 done; 1 failed otherwise (the server's own fault, INTERNAL); 2 a usage error (a
bad flag or argument, a file that cannot be read); 3 refused by the server (invalid, not found,
already exists, not signed in, not allowed; and rejected events); 4 unavailable (the server
cannot be reached or is overloaded: try again later); 130 interrupted.
"""

from __future__ import annotations

from typing import Any

import click
import grpc

from quartet.cli import (
    accounts,
    events,
    experiments,
    regions,
    scores,
)
from quartet.cli.session import Session, session
from quartet.client import QuartetError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_UNAVAILABLE = 4
EXIT_INTERRUPTED = 130

UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
}
FAILED = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DATA_LOSS,
}


def exit_status(error: QuartetError) -> int:
    if error.code in UNAVAILABLE:
        return EXIT_UNAVAILABLE
    return EXIT_FAILED if error.code in FAILED else EXIT_REFUSED


def describe(error: QuartetError, target: str) -> str:
    """The whole failure in one block: status and reason, message, every field violation."""
    reason = f" ({error.reason})" if error.reason else ""
    lines = [f"error: {error.code.name}{reason}", f"  {error.message or error.code.name}"]
    for violation in error.field_violations:
        cause = f" ({violation.reason})" if violation.reason else ""
        lines.append(f"  {violation.field}: {violation.description}{cause}")
    count = error.metadata.get("problem_count")
    if count and count.isdigit() and int(count) > len(error.field_violations):
        lines.append(f"  ... {int(count):,} problems in all")
    if error.retry_delay:
        lines.append(f"  try again in {error.retry_delay:g} s")
    if error.code == grpc.StatusCode.UNAUTHENTICATED and error.reason != "LOGIN_FAILED":
        lines.append(f"  log in with `quartet login --server {target}`, or give --token")
    elif error.code == grpc.StatusCode.UNAVAILABLE and not error.reason:
        lines.append(f"  is a quartet server running at {target}? (--server, QUARTET_SERVER)")
    return "\n".join(lines)


class Root(click.Group):
    """The root group: turns failures into one block on stderr and an exit status, and loads
    `server` (which needs the server's dependencies) only when it is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "server"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name != "server":
            return super().get_command(ctx, cmd_name)
        try:
            from quartet.server.cli import server
        except ImportError as missing:
            return _needs_server_extra(missing)
        return server

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except QuartetError as error:
            click.echo(describe(error, session().target), err=True)
            ctx.exit(exit_status(error))
        except OSError as error:  # a file named on the command line
            click.echo(f"error: {error}", err=True)
            ctx.exit(EXIT_USAGE)
        except KeyboardInterrupt:  # closing the channel cancels the call in flight
            click.echo("\ninterrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


def _needs_server_extra(missing: ImportError) -> click.Command:
    @click.command("server", help="Run the server (needs `pip install 'quartet[server]'`).")
    def server() -> None:
        raise click.UsageError(
            f"the server is not installed ({missing}): pip install 'quartet[server]'"
        )

    return server


@click.group(
    cls=Root,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Exit status: 0 done, 1 failed, 2 usage error, 3 refused by the server, "
    "4 server unavailable (try again), 130 interrupted. See docs/cli.md.",
)
@click.version_option(package_name="quartet", message="quartet %(version)s")
@click.pass_context
def quartet(ctx: click.Context) -> None:
    """quartet from the command line: scores, events, experiments, regions, accounts, and the
    server itself.

    Log in once with `quartet login` (the tokens are kept in $XDG_CONFIG_HOME/quartet, and
    refreshed), or give an API key or token with --token / QUARTET_TOKEN. Every command prints a
    table; --json (and for lists --format csv) print for scripts.
    """
    ctx.ensure_object(Session)  # shared by the subcommands, whose options fill it in


@quartet.command(
    help="Print the shell completion script. Load it with, for bash: "
    'eval "$(quartet completion bash)" (in ~/.bashrc); zsh: eval "$(quartet completion zsh)" '
    "(in ~/.zshrc); fish: quartet completion fish > ~/.config/fish/completions/quartet.fish"
)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    from click.shell_completion import get_completion_class

    complete = get_completion_class(shell)
    assert complete is not None  # every choice has one
    click.echo(complete(quartet, {}, "quartet", "_QUARTET_COMPLETE").source())


for module in (accounts, scores, events, experiments, regions):
    for command in module.COMMANDS:
        quartet.add_command(command)


def main() -> None:
    quartet(prog_name="quartet")


if __name__ == "__main__":
    main()
