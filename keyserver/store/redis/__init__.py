"""The Redis store (``RedisStore``): the production adapter, each operation one transaction or one
Lua script.

Key layout, all under the store's prefix ``P``::

    P account:{id}      hash    Account            P email:{email}     string  account id
    P session:{hex}     hash    Session (expires)  P device:{id}       hash    Device
    P devices:{acc}     zset    device ids by created_at
    P vehicle:{vin}     hash    Vehicle            P pairing:{vin}     hash    Pairing (expires)
    P owners:{vin}      list    ownership history, "since:until:owner_id" (until empty while open)
    P key:{id}          hash    KeyRecord          P keys:{vin}        zset    key ids by created_at
    P invitation:{id}   hash    Invitation (expires)
    P nonce:{scope}:{hex}       string  the nonce's expires_at (expires)
    P hit:{key}:{window start}  string  attempts in that window (expires)
    P revseq:{vin}      string  last sequence number; never deleted, so it never goes back
    P revlog:{vin}      zset    "{sequence}:" + CBOR entry, scored by sequence
    P revuntil:{vin}    zset    sequence numbers scored by the entry's ``until``
    P revsubj:{vin}     hash    "kind:subject" -> its entry: one entry per subject
    P holders:{vin}     zset    holders' claims, scored by expiry
    P livekey:{vin}:{device}    string  the device's live key on the vehicle
    P command:{id}      hash    CommandRecord (expires COMMAND_RETENTION_S after the command)
    P cmdkey:{account}:{idempotency key}  string  command id (expires with the command)
    P commands:{vin}    zset    command ids by expires_at
    P audit:{vin}       hash    seq -> audit event (expires AUDIT_RETENTION_S after the last batch)
    P car:{vin}         string  the instance the car is connected to (expires; hub)
    P hub               pub/sub channel of the hub's notices between instances (hub)

Records are hashes with one field per dataclass field (absent when None), so Lua can compare and
set a single field. Expiry only collects garbage: validity is always decided by comparing with
the caller's ``now``, and expiry is set so that clock skew cannot remove a record early.

Modules:

    store         RedisStore: accounts, sessions, devices, nonces, the refresh context,
                  vehicles, pairing, keys, invitations; holds the three parts below
    ledger        RedisLedger: the revocation ledger and the holders it counts
    channel       RedisChannelRecords: remote commands and audit events
    hub           RedisHub: the hub's notices between instances and where each car is
    keyspace      key names, expiry slack, failures mapped to StoreUnavailable
    records       records as hashes; lua: the scripts; shared_trips: the hot path's batching
    client        the client and its pool (one server, or the master behind Sentinel; WAIT)
"""

from keyserver.store.redis.store import EXPIRY_SLACK, RedisStore

__all__ = ["EXPIRY_SLACK", "RedisStore"]
