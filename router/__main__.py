"""`python -m router` is the `tensorgate` command."""

from router.cli import main

raise SystemExit(main())
