"""The Streamlit dashboard: a thin layer over gif_core (run: streamlit run app/streamlit_app.py)."""
