"""``python -m danet_ops [--check]``: see ``danet_ops.info``."""
import sys

from danet_ops.info import main

sys.exit(main())
