"""Origins: where the library's files really live."""
