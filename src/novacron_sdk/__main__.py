"""``python -m novacron_sdk`` runs the CLI."""

from novacron_sdk.cli.main import main

raise SystemExit(main())
