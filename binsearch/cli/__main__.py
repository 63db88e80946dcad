"""``python -m binsearch.cli``: the same as the ``binsearch`` command."""

import sys

from binsearch.cli.main import main

sys.exit(main())
