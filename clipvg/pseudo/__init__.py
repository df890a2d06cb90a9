"""Pseudo-language label generators (method doc §8): template, relation and caption sources,
and :func:`clipvg.pseudo.generate.generate_for_images`, the per-batch entry point."""
