"""The server tests' connection: a raw stub and a Python client on the ``server`` fixture, the
bundled model uploaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from service_testing import Conn

from zfnet.client.api import Client
from zfnet.tensors import CHANNEL_OPTIONS
from zfnet.v1 import zfnet_pb2_grpc


@pytest.fixture()
def conn(server, reference_onnx: Path) -> Iterator[Conn]:
    target, engine = server
    channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    client = Client(target)
    sha = client.ensure_model(reference_onnx)
    try:
        yield Conn(target, engine, zfnet_pb2_grpc.ZfnetStub(channel), channel, client, sha, reference_onnx)
    finally:
        client.close()
        channel.close()
