"""Where relay keeps what must survive a request: tasks, captions, dedupe, events.

``base.Store`` is the interface; ``memory`` and (soon) ``redis`` implement it and pass the
same contract tests (tests/store/test_contract.py).
"""
