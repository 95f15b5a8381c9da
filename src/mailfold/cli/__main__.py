"""`python -m mailfold.cli`."""

import sys

from mailfold.cli.main import main

sys.exit(main())
