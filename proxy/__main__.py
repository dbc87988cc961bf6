"""`python -m proxy` runs the same command line as the `repro-proxy` script."""

from proxy.cli import main

raise SystemExit(main())
