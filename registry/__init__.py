"""registry: the OCI distribution server and the client that pushes, pulls and reads ranges. Not built yet."""
