"""`python -m swiftlike` is the `swiftlike` command."""

from swiftlike.cli import main

raise SystemExit(main())
