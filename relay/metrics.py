"""Prometheus metrics, on a registry of their own so that several apps can share a process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.callbacks = Counter(
            "relay_callbacks", "Recognizer callbacks by outcome.", ["result"], registry=r
        )
        # The hot path's children, looked up once.
        self.callbacks_accepted = self.callbacks.labels(result="accepted")
        self.callbacks_duplicate = self.callbacks.labels(result="duplicate")
        self.callback_seconds = Histogram(
            "relay_callback_seconds",
            "Time to verify, merge and store one accepted callback.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.captions = Counter(
            "relay_caption_events", "Caption events published, by type.", ["type"], registry=r
        )
        self.task_transitions = Counter(
            "relay_task_transitions", "Task state changes.", ["to"], registry=r
        )
        self.tasks = Gauge(
            "relay_tasks", "Tasks known to this instance, by state.", ["state"], registry=r
        )
        self.viewers = Gauge("relay_viewers", "Connected viewers.", registry=r)
        self.viewer_rejects = Counter(
            "relay_viewer_rejects", "Viewer connections refused, by reason.", ["reason"], registry=r
        )
        self.viewer_disconnects = Counter(
            "relay_viewer_disconnects",
            "Viewers closed by relay, by reason (slow: past the pending-bytes bound).",
            ["reason"],
            registry=r,
        )
        self.deliveries = Counter(
            "relay_deliveries", "Caption frames handed to viewer sockets.", registry=r
        )
        self.coalesced = Counter(
            "relay_partials_coalesced",
            "Partials replaced by a newer one before sending.",
            registry=r,
        )
        self.engine_latency = Histogram(
            "relay_engine_latency_seconds",
            "In-process engines: audio read to event emitted, by kind (partial, final).",
            ["kind"],
            buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0),
            registry=r,
        )
        self.local_steps_skipped = Counter(
            "relay_local_steps_skipped",
            "Local engine steps that skipped transcription (no speech in the new audio).",
            registry=r,
        )
        self.cloud_calls = Counter(
            "relay_cloud_calls",
            "Cloud API calls, by action and result (ok, or the cloud's error code).",
            ["action", "result"],
            registry=r,
        )
        self.cloud_call_seconds = Histogram(
            "relay_cloud_call_seconds",
            "Cloud API call time, rate-limit wait excluded.",
            ["action"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
