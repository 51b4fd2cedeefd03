"""Local emulators of the cloud APIs relay uses, behind ``relay emulate``.

Each emulator speaks the documented wire contract (``/work/shared/contracts``): it verifies
the official SDK's request signatures (:mod:`relay.emulators.signing`), keeps the documented
state machine in a pure module, and produces real results with the local engine.
"""
