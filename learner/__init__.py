"""The streaming learner: Kafka feedback -> online adapter updates with EWC -> adapters published to Redis.

Not built yet: this package is the place for it. It may import retrieval, models and common, never service.
"""
