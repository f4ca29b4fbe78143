"""taggnn."""
