"""Write docs/configuration.md from the recipe dataclasses' and the model config's field metadata.

python scripts/generate_configuration_docs.py            # writes docs/configuration.md of this checkout
python scripts/generate_configuration_docs.py OTHER.md   # writes OTHER.md
"""

import sys
from pathlib import Path

from albertagpt.reference import CONFIGURATION_PAGE, write_configuration_page

if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / CONFIGURATION_PAGE
    print(f"Wrote {write_configuration_page(path)}")
