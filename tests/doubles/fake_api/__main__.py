"""`python -m tests.doubles.fake_api`: the command line of the fake API (see `main`)."""

import sys

from tests.doubles.fake_api import main

sys.exit(main())
