"""clinrag's answering side: configuration, backends, retrieval, generation and citations."""

__version__ = "0.1.0"
