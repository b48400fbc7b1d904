"""GIF Explorer's dashboard, the entry point: ``streamlit run app/streamlit_app.py``. The pages live in
``app/views/``; :mod:`app.frame` registers them and draws what they share."""

from app import frame

frame.run(frame.navigation())
