"""An ASGI app for the h2c upgrade test: Hypercorn accepts `Upgrade: h2c`, so a proxy that
relays it lets later HTTP/2 streams reach any path. Every response says which path it served."""


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"app saw {scope['path']}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
