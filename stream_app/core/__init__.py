"""The functional core: pure decisions and data. No Faust, no aiokafka, no I/O.

Imports nothing from ``stream_app.worker``, ``stream_app.brokers`` or ``stream_app.lab``
(enforced by ``tests/unit/test_import_direction.py``).
"""
