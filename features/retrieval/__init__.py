"""Serving-time retrieval and ranking: FAISS index, BM25, catalog, live catalog, fusion, ranking features."""
