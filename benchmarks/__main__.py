"""``python -m benchmarks [--size full|smoke] [--only SECTION ...]``: every benchmark, one run."""

import sys

from benchmarks.suite import main

sys.exit(main())
