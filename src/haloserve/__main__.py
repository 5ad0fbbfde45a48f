"""``python -m haloserve`` is the ``halo`` command."""

from haloserve.cli import main

raise SystemExit(main())
