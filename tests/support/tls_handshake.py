"""A real TLS handshake between two contexts through memory buffers: no sockets, no threads."""

from __future__ import annotations

import ssl


def handshake_in_memory(
    server: ssl.SSLContext, client: ssl.SSLContext, hostname: str = "localhost"
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Both ends after a completed handshake: ``(server_end, client_end)``.

    The side that refuses raises its ``ssl.SSLError`` (in TLS 1.3 the server judges the client's
    certificate last, so a refused client certificate surfaces from the server end).
    """
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server_end = server.wrap_bio(server_in, server_out, server_side=True)
    client_end = client.wrap_bio(client_in, client_out, server_hostname=hostname)
    pending = [client_end, server_end]
    for _ in range(10):
        for end in list(pending):
            try:
                end.do_handshake()
                pending.remove(end)
            except ssl.SSLWantReadError:
                pass
            server_in.write(client_out.read())
            client_in.write(server_out.read())
        if not pending:
            return server_end, client_end
    raise AssertionError("the handshake did not finish")
