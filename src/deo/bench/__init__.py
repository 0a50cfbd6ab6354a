"""deo.bench: the paper's experiments (character-level GPT on tiny Shakespeare, and friends).

``data`` holds the character corpus and batching, ``models`` the GPT and LSTM language models.
Submodules are not imported here, so importing ``deo.bench`` stays cheap and parts of the
benchmark that need more than torch load only when used.
"""
