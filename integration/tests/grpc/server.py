"""gRPC echo upstream for proxy_grpc.rs. Prints its port, then serves until killed."""
import sys
from concurrent import futures

import grpc

sys.path.insert(0, sys.argv[1])
import echo_pb2  # noqa: E402
import echo_pb2_grpc  # noqa: E402


class Echo(echo_pb2_grpc.EchoServicer):
    def Unary(self, request, context):
        context.set_trailing_metadata((("x-trailer", "unary"),))
        return echo_pb2.Msg(text=request.text, n=request.n)

    def ServerStream(self, request, context):
        context.set_trailing_metadata((("x-trailer", "server-stream"),))
        for i in range(request.n):
            yield echo_pb2.Msg(text=f"{request.text}-{i}", n=i)

    def ClientStream(self, request_iterator, context):
        total = 0
        count = 0
        for msg in request_iterator:
            total += msg.n
            count += 1
        context.set_trailing_metadata((("x-trailer", "client-stream"),))
        return echo_pb2.Msg(text=f"got {count}", n=total)

    def Bidi(self, request_iterator, context):
        for msg in request_iterator:
            yield echo_pb2.Msg(text=msg.text.upper(), n=msg.n)

    def Fail(self, request, context):
        context.set_trailing_metadata((("x-trailer", "fail"),))
        context.abort(grpc.StatusCode.NOT_FOUND, f"no such thing: {request.text}")


server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
