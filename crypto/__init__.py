"""Cryptography for fedcredit (no Flower imports here).

certs     federation CA, party credentials (TLS cert + X25519 envelope key + Flower key)
envelope  sealed party-to-party envelopes the relay cannot open
signing   Ed25519 signatures over artifacts and canonical-JSON manifests
tls       mutual-TLS credentials (gRPC, and stdlib ssl for the Flower front door) and caller identity
ckks      TenSEAL CKKS contexts and chunked ciphertext blobs
psi       X25519 ECDH-PSI primitives (id normalization, hash-to-point, blinding)
"""
