"""The synthetic demo world: scenes and rendering (``scenes``), expressions (``text``), the
simulated detector, scene-graph model and captioner, their tables, the random-object baseline,
the fresh training stream and ``clipvg synth`` (``cli``)."""
