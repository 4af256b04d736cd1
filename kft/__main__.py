"""`python -m kft`: the `kft` command, where the script is not on PATH."""

import sys

from kft.cli import main

sys.exit(main())
