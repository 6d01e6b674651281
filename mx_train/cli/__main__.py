"""``python -m mx_train.cli ARGS``: the ``mx`` command without the console script."""

import sys

from mx_train.cli import main

sys.exit(main())
