#!/usr/bin/env python3
"""Writes the seeds that hold a well-formed key (valid CRC32 checksum) into DIR/<target>/.

Made fresh at every run instead of committed: no key-shaped string lives in the repository,
and no two runs share a key. The checksum is keyauth's: CRC-32 (IEEE) of everything before
it, as six base62 digits.
"""
import os
import secrets
import sys
import zlib

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def checksum(body: str) -> str:
    n = zlib.crc32(body.encode())
    digits = []
    for _ in range(6):
        digits.append(ALPHABET[n % 62])
        n //= 62
    return "".join(reversed(digits))


def key(env: str) -> str:
    body = f"sk_{env}_" + "".join(secrets.choice(ALPHABET) for _ in range(44))
    return body + checksum(body)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (payloads here are under 16 KiB)."""
    assert len(payload) < 1 << 14
    length = len(payload)
    varint = bytes([length]) if length < 128 else bytes([(length & 0x7F) | 0x80, length >> 7])
    return bytes([number << 3 | 2]) + varint + payload


def main(out: str) -> None:
    test, live = key("test"), key("live")
    broken = test[:-1] + ("0" if test[-1] != "0" else "1")
    permission = lambda resource, action: field(1, resource.encode()) + field(2, action.encode())
    seeds = {
        "key_parser/valid_test": test.encode(),
        "key_parser/bearer_live": f"Bearer {live}".encode(),
        "key_parser/bad_checksum": broken.encode(),
        # VerifyRequest {key, required_permissions}; CheckPermissionRequest {key, resource, action}.
        "verify_request/verify": field(1, test.encode()) + field(2, permission("patients", "read")),
        "verify_request/check_permission": field(1, test.encode())
        + field(2, b"patients")
        + field(3, b"write"),
        "verify_request/verify_unknown_resource": field(1, f"Bearer {live}".encode())
        + field(2, permission("x" * 300, "read")),
    }
    for name, data in seeds.items():
        path = os.path.join(out, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main(sys.argv[1])
