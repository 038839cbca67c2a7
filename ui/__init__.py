"""The Streamlit app for clinicians, auditors and administrators (``streamlit run ui/app.py``).

Thin by design: it signs people in, calls ``assistant``, ``ingest`` and ``audit`` and renders
what they return. No retrieval or citation logic lives here.
"""
