"""Several zfserver replicas behind one channel: gRPC's client-side load balancing.

A target ``dns:///host:port`` (every address the name resolves to: a Kubernetes headless Service)
or a comma-separated list ``host1:port,host2:port`` (gRPC's static ``ipv4:``/``ipv6:`` resolver)
gets a service config with the ``round_robin`` policy, health checking of ``zfnet.v1.Zfnet`` (a
draining replica leaves the rotation) and a retry policy for UNAVAILABLE on the idempotent calls
(a replica that dies mid-call: the call runs again on another). Models are uploaded to each replica
directly (:func:`addresses`), since a balanced call cannot choose its replica.
"""

from __future__ import annotations

import ipaddress
import json
import socket

from zfnet.errors import InvalidArgument

SERVICE = "zfnet.v1.Zfnet"
IDEMPOTENT = ("HasModel", "ListModels", "GetModelInfo", "Predict", "GetActivations", "Deconv", "ListDatasets", "GetFilters")
RETRY_POLICY = {
    "maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"],
}
RETRY_BUFFER_BYTES = 16 << 20  # a retried request is kept this long at most (a Deconv of 32 CIFAR images is ~100 KiB)


def is_replicated(target: str) -> bool:
    """Whether ``target`` may name several replicas: ``dns:///...`` or a comma-separated list."""
    return target.startswith("dns:") or "," in target


def service_config() -> str:
    """round_robin, health checking and the UNAVAILABLE retry policy, as gRPC's JSON service config."""
    return json.dumps({
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": SERVICE},
        "methodConfig": [{"name": [{"service": SERVICE, "method": m} for m in IDEMPOTENT], "retryPolicy": RETRY_POLICY}],
    })


def channel_options() -> list[tuple[str, object]]:
    """Channel arguments of a balanced channel (added to the message-size options)."""
    return [
        ("grpc.service_config", service_config()),
        ("grpc.service_config_disable_resolution", 1),  # ours, not one from DNS TXT records
        ("grpc.enable_retries", 1),
        ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
    ]


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise InvalidArgument(f"replica address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def _resolve(host: str, port: int) -> list[tuple[str, int]]:
    """Every (ip, port) ``host`` resolves to, in the resolver's order, without duplicates."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise InvalidArgument(f"cannot resolve replica host {host!r}: {err.strerror}") from None
    return list(dict.fromkeys((str(info[4][0]), port) for info in infos))  # sockaddr: (ip, port, ...) for TCP


def _join(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def channel_target(target: str) -> str:
    """The gRPC target of a balanced channel: ``dns:`` as given; a list as ``ipv4:a,b`` (or ``ipv6:``),
    host names resolved first (the static resolvers take addresses only)."""
    if target.startswith("dns:"):
        return target
    ips = [_join(ip, port) for address in target.split(",") if address.strip() for ip, port in _resolve(*_split(address))[:1]]
    families = {ipaddress.ip_address(a.rpartition(":")[0].strip("[]")).version for a in ips}
    if len(families) != 1:
        raise InvalidArgument(f"replicas {target!r} mix IPv4 and IPv6 addresses; list one family")
    return f"ipv{families.pop()}:" + ",".join(ips)


def name_override(target: str) -> list[tuple[str, str]]:
    """For TLS to one replica by its IP: check the certificate against the DNS name of a ``dns:`` target."""
    if not target.startswith("dns:"):
        return []
    return [("grpc.ssl_target_name_override", _split(target.removeprefix("dns:").lstrip("/").rpartition("/")[2])[0])]


def addresses(target: str) -> list[str]:
    """Each replica's own address (``ip:port``): the list's, or what the DNS name resolves to now."""
    if target.startswith("dns:"):
        name = target.removeprefix("dns:").lstrip("/")
        if "/" in name:  # dns://authority/host:port
            name = name.rpartition("/")[2]
        return [_join(ip, port) for ip, port in _resolve(*_split(name))]
    return channel_target(target).partition(":")[2].split(",")
