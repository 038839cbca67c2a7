"""Ingestion: load files into Documents, split them into Chunks, embed and index them."""
