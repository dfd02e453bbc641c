#!/usr/bin/env python3
"""Interop check with Python grpcio: health and server reflection (v1alpha) of a running keyauth.

Usage: interop_health.py HOST:PORT METHOD...

METHOD...: every rpc of keyauth.v1.KeyAuthorityService (.ci/interop reads them from the proto);
reflection must describe exactly these.

Run by .ci/interop in the venv it makes (grpcio, grpcio-health-checking, grpcio-reflection).
Exits 0 when every check passes, 1 with a message naming the failed check otherwise.
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from google.protobuf.descriptor_pool import DescriptorPool

SERVICE = "keyauth.v1.KeyAuthorityService"
TIMEOUT = 10  # seconds per call


def fail(message):
    print(f"interop_health.py: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def check_health(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT)
        except grpc.RpcError as e:
            fail(f"Health/Check {name!r}: {e.code().name}: {e.details()}")
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        if status != "SERVING":
            fail(f"Health/Check {name!r} is {status}, expected SERVING")
        print(f"python grpcio: Health/Check {name!r}: {status}")
    # A service the server does not know is NOT_FOUND, as the health protocol says.
    try:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=TIMEOUT)
        fail("Health/Check of an unknown service answered instead of NOT_FOUND")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            fail(f"Health/Check of an unknown service: {e.code().name}, expected NOT_FOUND")
    print("python grpcio: Health/Check 'no.such.Service': NOT_FOUND")


def check_reflection(channel, expected_methods):
    # grpcio-reflection's client speaks grpc.reflection.v1alpha.
    database = ProtoReflectionDescriptorDatabase(channel)
    try:
        services = set(database.get_services())
    except grpc.RpcError as e:
        fail(f"reflection v1alpha ListServices: {e.code().name}: {e.details()}")
    for expected in (SERVICE, "grpc.health.v1.Health"):
        if expected not in services:
            fail(f"reflection v1alpha does not list {expected} (got {sorted(services)})")
    print(f"python grpcio: reflection v1alpha services: {', '.join(sorted(services))}")
    pool = DescriptorPool(database)
    try:
        service = pool.FindServiceByName(SERVICE)
    except (KeyError, grpc.RpcError) as e:
        fail(f"reflection v1alpha cannot describe {SERVICE}: {e}")
    methods = {m.name for m in service.methods}
    if methods != expected_methods:
        fail(
            f"{SERVICE} methods through reflection are {sorted(methods)}, "
            f"expected {sorted(expected_methods)}"
        )
    verify = service.methods_by_name["Verify"]
    if verify.input_type.full_name != "keyauth.v1.VerifyRequest":
        fail(f"Verify takes {verify.input_type.full_name}, expected keyauth.v1.VerifyRequest")
    print(f"python grpcio: reflection v1alpha describes {SERVICE}: {len(methods)} methods")


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    with grpc.insecure_channel(sys.argv[1]) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        except grpc.FutureTimeoutError:
            fail(f"cannot connect to {sys.argv[1]}")
        check_health(channel)
        check_reflection(channel, set(sys.argv[2:]))


if __name__ == "__main__":
    main()
