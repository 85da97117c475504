"""``python -m chattune.cli ...`` (and ``accelerate launch -m chattune.cli train ...``)."""

import sys

from chattune.cli import main

sys.exit(main())
