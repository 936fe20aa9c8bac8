"""
The demo page behind `app.py`: `models` loads the models and describes them, `chat` streams one model's reply and
draws where it looked, `page` lays out the gradio page. Only `page` imports gradio.
"""
