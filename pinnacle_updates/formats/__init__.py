"""The neutral layer: everything the publisher writes and the client reads, defined once.

The signed wire formats (channel index and manifests, rollout and fleet controls, the delta container
and its segments), the codecs (bsdiff-LZMA, LZMA with a preset dictionary), the canonical archive and
safe extraction of it into a tree, atomic file writes, and the CLIs' shared error and JSON output
conventions. It imports neither ``pinnacle_updates.client`` nor ``pinnacle_updates.repo_tools``; its
errors are its own (``FormatError`` and subclasses), and each side turns them into its own at the call.
"""
