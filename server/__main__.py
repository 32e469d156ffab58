"""``python -m server``: the same as the ``layerstream`` command."""

from server.cli import main

raise SystemExit(main())
