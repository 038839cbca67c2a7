"""One module per page. Not named ``pages/``: Streamlit would list such files by itself,
outside the role checks in ``ui.session``."""
