"""The audit trail: one tamper-evident record per decision.

record.py      Decision → record (pseudonymized, no tokens), canonical JSON
pseudonym.py   keyed HMAC pseudonyms with key ids and rotation
merkle.py      RFC 6962 hashing, compact ranges, inclusion proofs
note.py        Ed25519 signed notes and C2SP checkpoints
log.py         the append-only log: sessions, segments, chain, checkpoints, retention
recorder.py    async (queue) and sync (group commit) recording for the server
verify.py      the offline verifier
proof.py       single-record inclusion proofs
query.py       search, export (JSON/CSV) and reports
"""
