"""Linear probes over activations stored by flowlens runs (scikit-learn); filled in by the probing work."""
