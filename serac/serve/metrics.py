"""Prometheus metrics of one server (its own registry, so several apps can live in one process).

* ``serac_requests_total{endpoint, route, status}``: completion requests answered; ``route`` is ``edit``,
  ``base_model`` or ``none`` (refused before routing). The share routed to edits is
  ``sum(rate(serac_requests_total{route="edit"}[5m])) / sum(rate(serac_requests_total{route!="none"}[5m]))``.
* ``serac_request_duration_seconds{endpoint, route}``: time to the whole answer.
* ``serac_time_to_first_token_seconds{endpoint, route}``: streams only.
* ``serac_routing_duration_seconds``: the scope classifier's decision, queueing included.
* ``serac_edits_stored``: edits in the store; ``serac_edit_writes_total{operation, status}``.
* ``serac_generation_batch_size{route}``: requests that started decoding together: one admission into a
  continuous batch or one ``generate()`` call of the base model (``base_model``), one call of the
  counterfactual model (``edit``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServerMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    """The metrics of one app, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "serac_requests_total",
            "Completion requests answered, by endpoint, routing and HTTP status",
            ("endpoint", "route", "status"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "serac_request_duration_seconds",
            "Time to the whole answer of a completion request",
            ("endpoint", "route"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token = Histogram(
            "serac_time_to_first_token_seconds",
            "Time to the first streamed chunk of a completion request",
            ("endpoint", "route"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.routing = Histogram(
            "serac_routing_duration_seconds",
            "Time to the scope classifier's decision, waiting for a worker included",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.edits_stored = Gauge("serac_edits_stored", "Edits in the edit store", registry=self.registry)
        self.edit_writes = Counter(
            "serac_edit_writes_total",
            "Calls of the edits API that change the store, by operation and HTTP status",
            ("operation", "status"),
            registry=self.registry,
        )

        self.batch_size = Histogram(
            "serac_generation_batch_size",
            "Requests answered by one generate() call, by route",
            ("route",),
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
