"""The simulated back office's data side: keys, members, CSV import, publishing.

It produces exactly what a real back office would publish, through the same
codec the terminal decodes with (:mod:`terminal.sync`, :mod:`terminal.signing`),
so the simulator exercises the terminal with realistic lists: 1.1 million
members in three batches, several cards each, signed and chunked. The MQTT
side is :mod:`.office`, its state folder :mod:`.home`, the command line
``unionterm-backoffice`` :mod:`.cli`.
"""
