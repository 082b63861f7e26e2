"""``python -m resnetlab``: the same command line as the ``resnetlab`` script."""

import sys

from .cli import main

sys.exit(main())
