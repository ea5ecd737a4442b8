"""The `quartet` command: the SDK for people and shell scripts (`pip install "quartet[cli]"`).

One group per service (scores, events, experiments, regions, accounts, applications, keys),
login with tokens kept in $XDG_CONFIG_HOME/quartet, and the server's own commands under
`quartet server`. Output is a table by default, `--json` or `--format csv` for scripts;
docs/cli.md is generated from the help (scripts/gen_cli_docs.py).
"""
