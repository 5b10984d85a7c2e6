"""Retrieval: the Qdrant index of fused item vectors, the RAG context store and the user history store.

Not built yet: this package is the place for it.
"""
