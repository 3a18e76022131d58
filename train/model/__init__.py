"""The BERT that is trained (`bert`: config, Keras layers, losses), the
transformers config.json keys it also reads (`hf_config`), and which BERT a
run trains (`choice`).
"""
