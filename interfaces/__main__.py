"""``python -m interfaces serve`` does what ``ris serve`` does."""

import sys

from interfaces.cli import main

sys.exit(main())
