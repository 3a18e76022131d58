"""The model's way in and out of other formats: initialising from Google's,
Hugging Face's or another run's weights (`init_checkpoints`), the Hugging
Face layout, the TF Hub SavedModel, and the exports of a run (`exports`).
"""
