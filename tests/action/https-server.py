#!/usr/bin/env python3
"""A static HTTPS server on 127.0.0.1 for the action's install tests (tests/action/run.sh).

    https-server.py DIR CERT KEY PORTFILE LOGFILE

Serves DIR on a free port of 127.0.0.1 with the given certificate, writes the port to
PORTFILE once it listens, and logs each request's path to LOGFILE. It stops by itself after
ten minutes, so a test that dies cannot leave it running for long.
"""
import functools
import http.server
import ssl
import sys
import os
import threading


def main():
    root, cert, key, portfile, logfile = sys.argv[1:6]

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):
            with open(logfile, "a", encoding="utf-8") as log:
                log.write("%s %s\n" % (self.command, self.path))

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=root)
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    stop = threading.Timer(600, server.shutdown)
    stop.daemon = True
    stop.start()
    with open(portfile + ".tmp", "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.replace(portfile + ".tmp", portfile)
    server.serve_forever()


if __name__ == "__main__":
    main()
