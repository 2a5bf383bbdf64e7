"""gRPC client for proxy_grpc.rs: exercises every call shape through the proxy."""
import sys

import grpc

sys.path.insert(0, sys.argv[1])
import echo_pb2  # noqa: E402
import echo_pb2_grpc  # noqa: E402


def trailer(call):
    return dict(call.trailing_metadata()).get("x-trailer")


def main():
    channel = grpc.insecure_channel(sys.argv[2])
    stub = echo_pb2_grpc.EchoStub(channel)

    reply, call = stub.Unary.with_call(echo_pb2.Msg(text="hi", n=7), timeout=10)
    assert (reply.text, reply.n) == ("hi", 7), reply
    assert trailer(call) == "unary", call.trailing_metadata()

    call = stub.ServerStream(echo_pb2.Msg(text="s", n=500), timeout=10)
    got = [m.n for m in call]
    assert got == list(range(500)), got[:5]
    assert trailer(call) == "server-stream"

    def many():
        for i in range(1000):
            yield echo_pb2.Msg(text="c", n=i)

    reply, call = stub.ClientStream.with_call(many(), timeout=10)
    assert (reply.text, reply.n) == ("got 1000", sum(range(1000))), reply
    assert trailer(call) == "client-stream"

    # Bidirectional, interleaved: each reply arrives before the next request is produced.
    import queue

    q = queue.Queue()
    q.put(echo_pb2.Msg(text="ping0", n=0))

    def requests():
        for i in range(1, 50):
            yield q.get(timeout=5)
        yield q.get(timeout=5)

    call = stub.Bidi(requests(), timeout=10)
    for i, msg in enumerate(call):
        assert msg.text == f"PING{i}", msg
        if i < 49:
            q.put(echo_pb2.Msg(text=f"ping{i + 1}", n=i + 1))
        else:
            break
    call.cancel()

    try:
        stub.Fail(echo_pb2.Msg(text="x"), timeout=10)
        raise AssertionError("Fail succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
        assert "no such thing: x" in e.details(), e.details()
        assert dict(e.trailing_metadata()).get("x-trailer") == "fail"

    print("grpc ok")


main()
