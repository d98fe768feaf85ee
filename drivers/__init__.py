"""Real hardware behind the core's Protocols, one module per kind of device.

Each module imports its own library (pyscard, gpiozero, luma, pyserial); the
core imports none of them and reaches them only through :func:`drivers.factory.open_hardware`.
"""
