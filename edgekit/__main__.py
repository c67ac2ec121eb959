"""``python -m edgekit`` is the ``edgekit`` command."""

from edgekit.cli import main

if __name__ == "__main__":
    main()
