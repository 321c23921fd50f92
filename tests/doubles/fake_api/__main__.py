"""`python -m tests.doubles.fake_api ...`: runs the command line in `cli`."""

import sys

from tests.doubles.fake_api.cli import main

sys.exit(main())
