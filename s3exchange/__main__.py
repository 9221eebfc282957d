"""``python -m s3exchange``: the same command as the ``s3exchange`` console script."""

from .cli import main

raise SystemExit(main())
