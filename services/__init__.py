"""The operations a user can perform, as typed functions that check the role and write the
audit event: the CLI and the Streamlit pages are thin callers of these."""
