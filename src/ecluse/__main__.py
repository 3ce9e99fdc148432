"""`python -m ecluse` runs the command line."""

from ecluse.cli import main

raise SystemExit(main())
