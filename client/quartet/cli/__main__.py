"""`python -m quartet.cli` is the `quartet` command."""

from quartet.cli.main import main

main()
