"""After training: the milestone figures (evaluate.py, with authenticity.py's score) and the
export of the best checkpoint (export.py). Each runs as its own process."""
