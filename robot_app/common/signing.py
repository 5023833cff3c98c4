"""Ed25519 signatures on policy artifacts: the gate signs the bytes it validated; a robot loads only what verifies.

Keys are PEM files: `<name>.sign_key` (secret, mode 600, on the gate's machine) and `<name>.sign_pub` (public, on every
robot). A signature is the 64 raw bytes over the artifact's bytes, carried as hex. Torch-free, like the artifact.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from robot_app.common.artifact import ArtifactError


def generate_signing_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write <name>.sign_pub (hand to robots) and <name>.sign_key (keep). Never overwrites an existing pair."""
    directory = Path(directory)
    public, secret = directory / f"{name}.sign_pub", directory / f"{name}.sign_key"
    if public.exists() or secret.exists():
        raise FileExistsError(f"signing keys for {name!r} already exist in {directory}; remove them to replace them")
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    secret.touch(mode=0o600)
    secret.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return public, secret


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    key = _load(path, serialization.load_pem_private_key, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 secret key")
    return key


def load_trusted_key(path: str | Path) -> Ed25519PublicKey:
    key = _load(path, serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def _load(path, loader, **kwargs):
    try:
        return loader(Path(path).read_bytes(), **kwargs)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"cannot read signing key {path}: {error}") from None


def sign(data: bytes, key: Ed25519PrivateKey) -> str:
    return key.sign(data).hex()


def verify(data: bytes, signature: str, trusted: Ed25519PublicKey, source: str) -> None:
    """Raise ArtifactError unless `signature` (hex) is the trusted key's signature of exactly these bytes."""
    if not signature:
        raise ArtifactError(f"{source} is unsigned; this robot loads only policies signed by the validation gate")
    try:
        trusted.verify(bytes.fromhex(signature), data)
    except (ValueError, InvalidSignature):
        raise ArtifactError(f"{source}: the signature does not verify against this robot's trusted key (tampered, "
                            "or signed by another key)") from None
