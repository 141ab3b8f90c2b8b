"""DSSE envelopes: signing a payload with an ed25519 or ECDSA P-256 key, verifying one. Pure.

An envelope is ``{"payloadType", "payload" (base64), "signatures": [{"keyid", "sig"}]}``
and each signature covers PAE(payloadType, payload) — the type is signed too,
so a signature made for one kind of document cannot vouch for another.

Unsigned statements are never wrapped: ``sign`` always adds a signature, and an
envelope without one is rejected when read. A caller with no key stores the
bare payload; ``open_document`` tells the two apart ("unsigned", "signed",
"verified") without the caller looking inside.

Key ids are the hex sha256 of the public key's DER (SubjectPublicKeyInfo), the
same as go-securesystemslib's SHA256KeyID, so other DSSE tools agree on them.
ECDSA signatures are DER-encoded over SHA-256, as cosign and securesystemslib
write them.

``cryptography`` is imported inside the functions that need it: reading an
unsigned document, or importing this module, costs only the standard library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from orchestrator.core.errors import OrchestratorError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import (
        EllipticCurvePrivateKey,
        EllipticCurvePublicKey,
    )
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    PrivateKey = Ed25519PrivateKey | EllipticCurvePrivateKey
    PublicKey = Ed25519PublicKey | EllipticCurvePublicKey

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
# The media type sigstore and OCI referrers use for a DSSE envelope as a blob.
ENVELOPE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"

Algorithm = Literal["ed25519", "ecdsa-p256"]
Status = Literal["unsigned", "signed", "verified"]


class SignatureError(OrchestratorError):
    """A key that cannot sign or verify, a malformed envelope, or a failed verification."""


@dataclass(frozen=True)
class SigningKey:
    """A private key loaded once (at daemon start, so a bad key fails early)."""

    key_id: str
    algorithm: Algorithm
    key: PrivateKey


@dataclass(frozen=True)
class Opened:
    """A stored document, opened: the payload and how far it is vouched for.

    ``status`` is "unsigned" (a bare payload), "signed" (an envelope whose
    signatures were not checked: no key was given) or "verified".
    """

    payload: bytes
    payload_type: str | None
    status: Status
    key_ids: tuple[str, ...]  # as the envelope names them: hints, not proof


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body,
    lengths in ASCII decimal bytes."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def load_signing_key(pem: bytes, password: bytes | None = None) -> SigningKey:
    """A PEM private key (PKCS#8 or SEC1), ed25519 or ECDSA P-256."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        loaded = load_pem_private_key(pem, password=password)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"cannot load the private key: {exc}") from exc
    algorithm, key = _supported_private(loaded)
    return SigningKey(_key_id(key.public_key()), algorithm, key)


def key_id(pem: bytes, password: bytes | None = None) -> str:
    """Hex sha256 of the public key's DER; accepts a public or a private key PEM."""
    return _key_id(_public_key(pem, password))


def sign(payload: bytes, key: SigningKey | bytes, *,
         payload_type: str = IN_TOTO_PAYLOAD_TYPE, password: bytes | None = None
         ) -> dict[str, Any]:
    """An envelope over ``payload`` with one signature by ``key`` (loaded, or PEM bytes)."""
    signing = key if isinstance(key, SigningKey) else load_signing_key(key, password)
    message = pae(payload_type, payload)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if isinstance(signing.key, ec.EllipticCurvePrivateKey):
        sig = signing.key.sign(message, ec.ECDSA(hashes.SHA256()))
    else:
        sig = signing.key.sign(message)
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": signing.key_id, "sig": base64.b64encode(sig).decode("ascii")}],
    }


def encode_envelope(envelope: Mapping[str, Any]) -> bytes:
    """Stable bytes for storing an envelope: sorted keys, no whitespace."""
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode("utf-8")


def verify(envelope: Mapping[str, Any] | bytes | str, key_pem: bytes, *,
           payload_type: str | None = IN_TOTO_PAYLOAD_TYPE,
           password: bytes | None = None) -> bytes:
    """The payload, if one signature verifies with ``key_pem`` (a public key, or for
    convenience the private one); ``SignatureError`` otherwise. With
    ``payload_type`` set, an envelope of another type is rejected too."""
    data = _envelope(envelope)
    if data is None:
        raise SignatureError("not a DSSE envelope (unsigned document?)")
    kind, payload, signatures = data
    if payload_type is not None and kind != payload_type:
        raise SignatureError(f"payloadType is {kind!r}, expected {payload_type!r}")
    public = _public_key(key_pem, password)
    message = pae(kind, payload)
    # keyid is an unauthenticated hint (DSSE): try the key on every signature.
    if any(_verifies(public, sig, message) for _, sig in signatures):
        return payload
    raise SignatureError(f"no signature verifies with key {_key_id(public)[:16]}… "
                         f"({len(signatures)} signature(s) checked)")


def open_document(document: Mapping[str, Any] | bytes | str, key_pem: bytes | None = None,
                  *, payload_type: str | None = IN_TOTO_PAYLOAD_TYPE,
                  password: bytes | None = None) -> Opened:
    """Open a stored attestation, signed or not. With ``key_pem``, an envelope must
    verify (``SignatureError`` otherwise); an unsigned document opens as "unsigned"
    either way, and the caller decides whether that is acceptable."""
    data = _envelope(document)
    if data is None:
        if isinstance(document, Mapping):
            body = json.dumps(document, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False).encode("utf-8")
        else:
            body = document.encode("utf-8") if isinstance(document, str) else document
        return Opened(body, None, "unsigned", ())
    kind, payload, signatures = data
    ids = tuple(keyid for keyid, _ in signatures if keyid)
    if key_pem is None:
        return Opened(payload, kind, "signed", ids)
    verify(document, key_pem, payload_type=payload_type, password=password)
    return Opened(payload, kind, "verified", ids)


def signature_status(document: Mapping[str, Any] | bytes | str) -> Literal["unsigned", "signed"]:
    """"signed" for a DSSE envelope (not verified), "unsigned" for a bare document."""
    return "unsigned" if _envelope(document) is None else "signed"


# --- internals ---------------------------------------------------------------------------


def _envelope(document: Mapping[str, Any] | bytes | str
              ) -> tuple[str, bytes, list[tuple[str, bytes]]] | None:
    """(payloadType, payload, [(keyid, sig)]) of an envelope; None for a bare document."""
    if isinstance(document, Mapping):
        data: Any = document
    else:
        try:
            data = json.loads(document)
        except ValueError as exc:
            raise SignatureError(f"not JSON: {exc}") from exc
    if not isinstance(data, Mapping):
        raise SignatureError("not a JSON object")
    if "payloadType" not in data and "signatures" not in data:
        return None
    kind, payload_text, entries = data.get("payloadType"), data.get("payload"), \
        data.get("signatures")
    if not isinstance(kind, str) or not isinstance(payload_text, str):
        raise SignatureError("envelope: payloadType and payload must be strings")
    if not isinstance(entries, list) or not entries:
        # Never written by sign(): unsigned payloads are stored bare.
        raise SignatureError("envelope has no signatures")
    signatures = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("sig"), str):
            raise SignatureError(f"envelope: signatures[{index}].sig must be a string")
        keyid = entry.get("keyid") or ""
        if not isinstance(keyid, str):
            raise SignatureError(f"envelope: signatures[{index}].keyid must be a string")
        signatures.append((keyid, _b64decode(entry["sig"], f"signatures[{index}].sig")))
    return kind, _b64decode(payload_text, "payload"), signatures


def _b64decode(text: str, where: str) -> bytes:
    """Standard or URL-safe base64, padded or not: DSSE readers accept both."""
    normal = text.replace("-", "+").replace("_", "/")
    normal += "=" * (-len(normal) % 4)
    try:
        return base64.b64decode(normal, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"envelope: {where} is not base64") from exc


def _public_key(pem: bytes, password: bytes | None) -> PublicKey:
    from cryptography.hazmat.primitives.serialization import (
        load_pem_private_key,
        load_pem_public_key,
    )

    if b"PRIVATE KEY" in pem:  # "-----BEGIN (EC |ENCRYPTED )?PRIVATE KEY-----"
        try:
            private = load_pem_private_key(pem, password=password)
        except (ValueError, TypeError) as exc:
            raise SignatureError(f"cannot load the private key: {exc}") from exc
        return _supported_private(private)[1].public_key()
    try:
        public = load_pem_public_key(pem)
    except ValueError as exc:
        raise SignatureError(f"cannot load the public key: {exc}") from exc
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if isinstance(public, ed25519.Ed25519PublicKey):
        return public
    if isinstance(public, ec.EllipticCurvePublicKey):
        _check_curve(public.curve)
        return public
    raise SignatureError(f"{type(public).__name__} not supported; use ed25519 or ECDSA P-256")


def _supported_private(key: object) -> tuple[Algorithm, PrivateKey]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519", key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        _check_curve(key.curve)
        return "ecdsa-p256", key
    raise SignatureError(f"{type(key).__name__} not supported; use ed25519 or ECDSA P-256")


def _check_curve(curve: object) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(curve, ec.SECP256R1):
        name = getattr(curve, "name", type(curve).__name__)
        raise SignatureError(f"ECDSA curve {name} not supported; use P-256")


def _key_id(public: PublicKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    der = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _verifies(public: PublicKey, sig: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(sig, message, ec.ECDSA(hashes.SHA256()))
        else:
            public.verify(sig, message)
    except InvalidSignature:
        return False
    return True
