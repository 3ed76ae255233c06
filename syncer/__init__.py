"""syncer keeps a pgvector embedding of table rows' text in sync with the rows."""

__version__ = "0.1.0"
