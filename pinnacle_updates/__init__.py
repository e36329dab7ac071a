"""pinnacle-updates: secure, delta-compressed, self-rolling-back software updates over a static TUF repository.

One installed namespace, three layers (docs/ARCHITECTURE.md):

- :mod:`pinnacle_updates.formats`: the neutral layer, the signed wire formats, the codecs, the canonical
  archive and atomic files; it imports neither side.
- :mod:`pinnacle_updates.repo_tools`: the publisher (``pinnacle-release``).
- :mod:`pinnacle_updates.client`: the client (``pinnacle-update``, the Python API, the agent).

The publisher and the client never import each other.
"""

__version__ = "0.1.0"

from pinnacle_updates._lean_imports import import_lean as _import_lean

_import_lean()  # before any layer imports tuf or httpx: see _lean_imports for the 0.2 s this saves per process
