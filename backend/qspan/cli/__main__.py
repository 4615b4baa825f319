"""python -m qspan.cli"""

import sys

from qspan.cli import main

sys.exit(main())
