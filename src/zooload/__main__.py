"""``python -m zooload``: the command line (see :mod:`zooload.cli`)."""

import sys

from zooload.cli import main

if __name__ == "__main__":
    sys.exit(main())
