"""The learner's Prometheus metrics (`recsys_learner_*`), one registry per learner."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class LearnerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter("recsys_learner_events_total", "Events consumed, by type", ["type"], registry=r)
        self.duplicates = Counter("recsys_learner_duplicates_total", "Events skipped: already applied", registry=r)
        self.unknown = Counter("recsys_learner_unknown_items_total", "Events about items the model lacks",
                               registry=r)  # fmt: skip
        self.items_added = Counter("recsys_learner_items_added_total",
                                   "Items added after training that the learner learnt of", registry=r)  # fmt: skip
        self.dead_letters = Counter("recsys_learner_dead_letters_total", "Undecodable or invalid records",
                                    ["reason"], registry=r)  # fmt: skip
        self.lag = Gauge("recsys_learner_lag", "Records behind the end of the feedback topic", registry=r)
        self.batch_seconds = Histogram("recsys_learner_batch_duration_seconds", "Update time per micro-batch",
                                       buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                                       registry=r)  # fmt: skip
        self.loss = Gauge("recsys_learner_loss", "Training loss of the last step", registry=r)
        self.holdout_loss = Gauge("recsys_learner_holdout_loss", "Hold-out loss of the served adapter", registry=r)
        self.ewc = Gauge("recsys_learner_ewc_penalty", "EWC penalty of the last step", registry=r)
        self.updated_fraction = Gauge("recsys_learner_updated_fraction",
                                      "Fraction of adapter parameters the last step moved", registry=r)  # fmt: skip
        self.lr = Gauge("recsys_learner_learning_rate", "Uncertainty-scaled step size of the last step", registry=r)
        self.published = Counter("recsys_learner_published_total", "Adapter versions published", registry=r)
        self.version = Gauge("recsys_learner_adapter_version", "Last published adapter version", registry=r)
        self.rejected = Counter("recsys_learner_rejected_updates_total", "Updates the hold-out guardrail refused",
                                registry=r)  # fmt: skip
        self.skipped = Counter("recsys_learner_skipped_steps_total", "Steps skipped for a non-finite loss",
                               registry=r)  # fmt: skip
        self.fine_tunes = Counter("recsys_learner_fine_tunes_total", "Periodic fine-tunes of the served model, by "
                                  "outcome", ["outcome"], registry=r)  # fmt: skip
        self.fine_tune_seconds = Gauge("recsys_learner_fine_tune_seconds", "The last fine-tune, from taking its "
                                       "events to serving the new model", registry=r)  # fmt: skip
        self.fine_tune_pending = Gauge("recsys_learner_fine_tune_pending_events", "Positive events the served "
                                       "model has not been fine-tuned on", registry=r)  # fmt: skip
        self.publish_errors = Counter("recsys_learner_publish_errors_total", "Failed publishes (retried)",
                                      registry=r)  # fmt: skip
