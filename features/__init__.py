"""intently's Ray-free library: events and text in, features, vectors and scores out."""
