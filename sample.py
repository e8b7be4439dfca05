"""Generate audio with a trained WhisperGPT: ``python sample.py --checkpoint DIR --seconds S --out DIR``.

Same as ``whispergpt sample``; see ``whispergpt/tools/sample.py`` (or ``--help``) for the options.
"""

import sys

from whispergpt.tools.sample import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
