"""python -m qspan"""

import sys

from qspan.cli import main

sys.exit(main())
