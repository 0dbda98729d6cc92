"""The input contract and batch transforms: schema, validation, polars transforms, text, importers."""
