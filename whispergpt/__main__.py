import sys

from whispergpt.cli import main

sys.exit(main())
