"""Allow `python -m collector`."""

from collector.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
