"""`python -m kft.cli`: the `kft` command."""

import sys

from kft.cli import main

sys.exit(main())
