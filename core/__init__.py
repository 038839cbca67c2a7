"""Shared foundation of every stage: settings, errors, data types, text helpers, backend
protocols and registry, and the library (manifest + vector index). Imports nothing above it."""
