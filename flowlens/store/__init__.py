"""HDF5 run files: writer, reader (`Run`) and tidy tables."""
