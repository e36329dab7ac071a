"""The local update agent: ``pinnacle-update serve`` (dashboard and REST API on 127.0.0.1:8004).

The HTTP side (``app``) needs Starlette and uvicorn, which come with the optional extra
``pip install 'pinnacle-updates[agent]'``: most installs run the client headless (cron, a
service manager, the Python API) and should not carry an ASGI stack, its parsers and their
security updates for a server they never start. Starlette is small, typed and well kept, needs no
code generation and lets us write the OpenAPI document ourselves; uvicorn is its reference server.

The modules that do not serve HTTP (``token``, ``notify``, ``analytics``, ``service``) import
neither, so ``pinnacle-update token`` and the analytics work on the plain client.
"""
