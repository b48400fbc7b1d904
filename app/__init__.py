"""The Streamlit dashboard: a thin layer over gif_core (run: streamlit run app/Model_and_data.py)."""
