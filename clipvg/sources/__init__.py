"""Where datasets come from: the official CLIP-VG split files (:mod:`clipvg.sources.official`)
and the synthetic demo world (:mod:`clipvg.sources.synthetic`); both write clipvg datasets
(:mod:`clipvg.data`). Real pseudo-label models' output becomes a dataset's record tables through
:mod:`clipvg.sources.records`."""
