"""unionterm: firmware of the union member-card terminal (core package).

The core never imports pyscard, gpiozero, luma or serial; it talks to hardware
only through the Protocols in :mod:`terminal.hardware`.
"""

__version__ = "0.1.0"
