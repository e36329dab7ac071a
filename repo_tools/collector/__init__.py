"""The fleet feedback collector (``pinnacle-release collector serve``): clients' outcome reports in, fleet
health out.

``storage`` keeps reports in SQLite (the embedded default) or PostgreSQL with per-hour aggregates,
``summary`` turns the aggregates into the fleet report, ``app`` is the ASGI service, ``openapi`` its
document. The wire format of the reports is ``formats.report``. Nothing here changes what a client
installs: the repository stays static files, and feedback is a separate, optional service.
"""
