"""builder: Dockerfiles to images (parser, build graph, cache, RUN/COPY/ADD). Not built yet."""
