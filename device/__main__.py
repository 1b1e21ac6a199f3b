"""`python -m device` is the `edgecap` command."""
from device.cli import main

raise SystemExit(main())
