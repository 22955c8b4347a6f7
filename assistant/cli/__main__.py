"""`python -m assistant.cli`: the same as the `mtp-assistant` command."""

import sys

from assistant.cli import main

sys.exit(main())
