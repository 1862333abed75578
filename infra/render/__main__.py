"""`python -m infra.render`."""

import sys

from infra.render.cli import main

sys.exit(main())
