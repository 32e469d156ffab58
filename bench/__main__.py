"""``python -m bench``: the same as ``layerstream bench``."""

from bench.cli import main

raise SystemExit(main())
