import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the shared helpers (passkit.py) beside the tests

REPO = Path(__file__).resolve().parent.parent
