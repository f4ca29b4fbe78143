"""``python -m taggnn``: the ``taggnn`` command (also under ``torchrun -m taggnn``)."""
import sys

from .cli import main

sys.exit(main())
