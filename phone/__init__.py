"""phone: the reference phone client and its offline key wallet.

Proximity first: at the car a command goes over Bluetooth (``ble_fallback``'s phone side) with the
wallet's key; the cloud is for a car out of range and for background sync (``phone.client``).
"""
