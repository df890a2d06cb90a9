"""Converters from the files real pseudo-label models write to a dataset's record tables
(``detections``, ``triplets``, ``captions``; see ``docs/pseudo.md``): COCO detection results
(``coco``), Pseudo-Q's released detection / attribute files (``pseudoq``), RelTR's raw outputs
(``reltr``), captions one per line (``captions``); ``common`` (input files, the dataset's images,
one-line errors), ``pth`` (restricted ``.pth`` reader), ``vocab`` (the tools' vocabularies,
Pseudo-Q's people / clothing classes), ``writer`` (table + manifest) and ``clipvg records``
(``cli``)."""
