"""A bare grpc.aio Charging server that answers at once: the limit of Python gRPC on this machine.

It parses nothing beyond what protobuf does, touches no owner and no database, and answers every
CreditControl with SUCCESS, granting what was asked (so the load generator's sessions run their
normal course). benchmarks/bench_grpc.py measures it with the same load generator, the same way,
in the same run as the real front door: the ratio is the front door's efficiency.

Usage: python benchmarks/echo_server.py --port 50099
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc

from cluster.pb import billing_pb2 as pb
from cluster.pb import billing_pb2_grpc as pb_grpc


def echo(request: pb.CreditControlRequest) -> pb.CreditControlAnswer:
    answer = pb.CreditControlAnswer(
        session_id=request.session_id,
        request_number=request.request_number,
        result_code=pb.RESULT_CODE_SUCCESS,
    )
    for entry in request.services:
        grant = answer.services.add(result_code=pb.RESULT_CODE_SUCCESS, validity_time_s=600)
        if entry.HasField("rating_group"):
            grant.rating_group = entry.rating_group
        if entry.HasField("requested"):
            grant.granted.CopyFrom(entry.requested)
    return answer


class EchoCharging(pb_grpc.ChargingServicer):
    async def CreditControl(
        self, request: pb.CreditControlRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreditControlAnswer:
        return echo(request)

    async def CreditControlStream(
        self,
        request_iterator: AsyncIterator[pb.CreditControlRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.CreditControlAnswer]:
        async for request in request_iterator:
            yield echo(request)

    async def CreditControlBatchStream(
        self,
        request_iterator: AsyncIterator[pb.CreditControlRequestBatch],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.CreditControlAnswerBatch]:
        async for batch in request_iterator:
            yield pb.CreditControlAnswerBatch(answers=[echo(r) for r in batch.requests])


async def serve(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ChargingServicer_to_server(EchoCharging(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"echo server on 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=50099)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
