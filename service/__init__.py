"""The inference service (FastAPI): POST /recommend with grounded explanations, POST /feedback.

Not built yet: this package is the place for it. It may import retrieval, models and common, never learner.
"""
