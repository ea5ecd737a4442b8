"""`python -m quartet.server` is `quartet server` (also installed as `quartet-server`)."""

from quartet.server.cli import main

main()
