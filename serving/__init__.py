"""Ray Serve deployments (encoder, retriever, ranker, profiles), bound together in app.py."""
