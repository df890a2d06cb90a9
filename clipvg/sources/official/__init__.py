"""The official CLIP-VG split files (``.pth``): restricted reader (``unpickler``), vocabulary
(``formats``), import (``importer``), export (``export``) and ``clipvg import-official`` /
``export-official`` (``cli``)."""
