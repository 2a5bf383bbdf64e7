"""Calls payments.v1.Payments/Refund through a sluice proxy and prints, as JSON, what a gRPC
client learns from a mesh denial: the status code and message, and the rich details that
grpcio-status decodes from grpc-status-details-bin (ErrorInfo and Help)."""

import json
import sys

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

target = sys.argv[1]
with grpc.insecure_channel(target) as channel:
    call = channel.unary_unary(
        "/payments.v1.Payments/Refund",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    try:
        call(b"", timeout=10)
        print(json.dumps({"ok": True}))
        sys.exit(0)
    except grpc.RpcError as e:
        out = {"code": e.code().name, "message": e.details()}
        status = rpc_status.from_call(e)
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    out["errorInfo"] = {
                        "reason": info.reason,
                        "domain": info.domain,
                        "metadata": dict(info.metadata),
                    }
                elif detail.Is(error_details_pb2.Help.DESCRIPTOR):
                    help_ = error_details_pb2.Help()
                    detail.Unpack(help_)
                    out["help"] = [
                        {"description": l.description, "url": l.url} for l in help_.links
                    ]
        print(json.dumps(out))
