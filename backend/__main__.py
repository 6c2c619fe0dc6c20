"""``python -m backend``: the worker's command line."""

from __future__ import annotations

from backend.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
