"""LMDB storage: the only package that imports `lmdb` (see `schema` for the layout)."""
