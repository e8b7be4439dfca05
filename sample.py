"""Generate audio with a trained WhisperGPT: ``python sample.py [--debug] --checkpoint DIR --seconds S --out DIR``.

Same as ``whispergpt sample`` (errors and exit codes: ``whispergpt/cli/__init__.py``); see
``whispergpt/inference/pipeline.py`` (or ``--help``) for the options.
"""

import sys

from whispergpt.cli import run_script

if __name__ == "__main__":
    sys.exit(run_script("sample"))
