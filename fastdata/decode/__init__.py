"""Bytes to pixels: JPEG, PNG and WebP decoding.

- :mod:`.images`: ``decode_image`` and the header readers (format, size) for every format.
- :mod:`.png`: a Numba PNG decoder (inflate, unfilter) used for small PNGs.
- :mod:`.roi`: region decoding of JPEGs (only the rows and columns a crop needs), through
  ``roijpeg.c`` compiled on first use against the system's libjpeg-turbo.

Imports only :mod:`fastdata.errors`.
"""
