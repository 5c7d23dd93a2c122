"""``python -m seglearn ...`` (and ``torchrun -m seglearn ...``): see :mod:`seglearn.cli`."""

import sys

from seglearn.cli import main

if __name__ == "__main__":
    sys.exit(main())
