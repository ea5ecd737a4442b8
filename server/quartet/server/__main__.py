"""`python -m quartet.server` is the `quartet-server` command."""

from quartet.server.cli import main

main()
