"""`python -m tests.doubles.fake_jetstream ...`: runs the command line in `cli`."""

import sys

from tests.doubles.fake_jetstream.cli import main

sys.exit(main())
