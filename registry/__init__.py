"""registry: the OCI distribution server on aiohttp and the client that pushes, pulls and reads ranges. Not built yet."""
