"""builder: Dockerfiles to images (parser, build graph, cache, RUN/COPY/ADD)."""

from builder.dockerfile import Dockerfile, Instruction, parse_dockerfile

__all__ = ["Dockerfile", "Instruction", "parse_dockerfile"]
