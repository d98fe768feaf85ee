"""Make a back-office signing key pair: the seed for the publisher, the public half for terminals.

Run ``python -m simulator.backoffice.keys PRIVATE PUBLIC``; it prints the key
id that terminals will see in envelope headers. An existing private key is
never overwritten, so a mistyped command cannot orphan a fleet.
"""

from __future__ import annotations

import argparse
import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from terminal.signing import key_id, write_private_key, write_public_key


def generate_keypair(private_path: str | os.PathLike[str],
                     public_path: str | os.PathLike[str]) -> str:
    """Create a fresh Ed25519 key pair as two hex files; returns its key id."""
    key = Ed25519PrivateKey.generate()
    write_private_key(private_path, key)
    write_public_key(public_path, key.public_key())
    return key_id(key.public_key())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("private", help="seed file to create (mode 0600)")
    parser.add_argument("public", help="public key file to create (give it to terminals)")
    args = parser.parse_args(argv)
    print(f"key_id={generate_keypair(args.private, args.public)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
