"""Event data: schema, ingestion, vocabularies, splits and batches."""
