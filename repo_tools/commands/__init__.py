"""The commands of ``pinnacle-release``, one module per command group.

``repository`` (init, publish, promote, refresh, status, verify, prune), ``fleet`` (rollout, yank),
``trust`` (keys, root, targets, sync) and ``hosting`` (serve, nginx-config) each list their
commands in ``COMMANDS``; ``repo_tools.cli`` adds them to the root group, the one place commands
are registered. What several commands share (the error group, key loading, common options) is in
``options``. These modules import ``options`` and the library, never ``repo_tools.cli`` or each other.
"""
