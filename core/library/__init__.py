"""The document library every stage shares: the manifest (source of truth) and the vector
index built from it, with the single-writer lock."""
