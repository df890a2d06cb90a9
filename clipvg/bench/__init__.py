"""Throughput benchmarks and ``clipvg benchmark``: data streaming (``data``), training
(``train``), reliability scoring (``score``); their Ray parts go through
:mod:`clipvg.distributed`."""
