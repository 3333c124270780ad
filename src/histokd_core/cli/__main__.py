import sys

from histokd_core.cli import main

sys.exit(main())
