"""Reading training data: LMDB Datum databases and friends."""
