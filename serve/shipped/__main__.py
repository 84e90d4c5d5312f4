"""`python -m serve.shipped ADAPTER_FOLDER RANKER_JSON [TOWER_FILE]`: pack a trained adapter, its ranker and the
tower (if given) in as what ships."""

import json
import sys
from pathlib import Path

from serve.shipped import pack

if len(sys.argv) not in (3, 4):
    sys.exit("usage: python -m serve.shipped ADAPTER_FOLDER RANKER_JSON [TOWER_FILE]")
tower = Path(sys.argv[3]) if len(sys.argv) == 4 else None
print(json.dumps({"packed into": str(pack(Path(sys.argv[1]), Path(sys.argv[2]), tower_file=tower))}))
