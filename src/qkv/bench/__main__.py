"""``python -m qkv.bench``."""

import sys

from qkv.bench import main

sys.exit(main())
