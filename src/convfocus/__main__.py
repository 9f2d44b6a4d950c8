"""``python -m convfocus`` runs the command line."""

from convfocus.cli import main

raise SystemExit(main())
