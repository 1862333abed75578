"""moto's WSGI app (every AWS service it emulates; this project uses SES), for `local.ses_emulator`.

`python -m moto.server` serves it on werkzeug's development server, which closes the connection after every
answer (and, after each one, drains whatever the client already sent: a kept-alive client's next request).
Real SES keeps connections alive and the consumer's SES client reuses them, so the emulator runs this app under
gunicorn's threaded worker with keep-alive instead: one worker process (moto keeps its state in memory), many
threads. Every email then costs what it costs against SES, not a TCP connect and close on both sides.
"""

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

app = DomainDispatcherApplication(create_backend_app)
