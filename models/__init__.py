
from pathlib import Path

# The model shipped in the repository (trained by `make default-model`, see its CARD.md).
SHIPPED_MODEL_DIR = Path(__file__).resolve().parent / "default"
