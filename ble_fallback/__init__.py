"""ble_fallback: the phone↔car Bluetooth LE protocol, for unlocking when the cloud is down.

The sans-IO core — ``framing`` (chunks and frames), ``messages`` (CBOR messages) and
``protocol`` (``CarSession``, ``PhoneSession``) — imports no asyncio and no BLE library. The
adapters drive it over a ``link.Link``: ``car.CarEndpoint`` on the car, ``phone.unlock_over_ble``
and ``phone.carry_over_ble`` on the phone. ``link.SimulatedLink`` and ``virtual_time`` run it
all without a radio or a real clock. Specified in docs/protocol.md, "BLE protocol".
"""
