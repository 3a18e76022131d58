"""Independent references, written from the papers and Google's formats
rather than from the code under test: LAMB's Algorithm 2 and BERT's forward
pass in NumPy, Google's tokenizer, Google's checkpoint names."""
