"""`python -m serve.shipped ADAPTER_FOLDER RANKER_JSON`: pack a trained adapter and its ranker in as what ships."""

import json
import sys
from pathlib import Path

from serve.shipped import pack

if len(sys.argv) != 3:
    sys.exit("usage: python -m serve.shipped ADAPTER_FOLDER RANKER_JSON")
print(json.dumps({"packed into": str(pack(Path(sys.argv[1]), Path(sys.argv[2])))}))
