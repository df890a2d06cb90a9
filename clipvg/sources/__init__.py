"""Where datasets come from: the official CLIP-VG split files (:mod:`clipvg.sources.official`)
and the synthetic demo world (:mod:`clipvg.sources.synthetic`); both write clipvg datasets
(:mod:`clipvg.data`)."""
