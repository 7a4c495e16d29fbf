"""PAT itself: the PyTorch network, the Keras H5 conversion and the BentoML model store.

Imports nothing from `serving` or `cache` (checked in the lint step). See docs/architecture.md.
The constants below live here, not in `model.py`, so light modules can use them without importing torch.
"""

#: Minutes in one week, the input length PAT was pre-trained on.
WEEK_MINUTES = 10_080

#: (patch size, encoder layers, attention heads) of the published sizes (paper, Table 1).
PAT_SIZES: dict[str, tuple[int, int, int]] = {"S": (18, 1, 6), "M": (18, 2, 12), "L": (9, 4, 12)}
