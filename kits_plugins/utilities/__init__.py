"""Small single-purpose helpers shared by all pipeline stages."""
