"""``python -m authz`` is ``tollgate``."""

import sys

from authz.cli import main

sys.exit(main())
