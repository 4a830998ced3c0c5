"""builder: Dockerfiles to images (parser, typed instructions, build graph, cache, RUN/COPY/ADD, base rootfs)."""

from builder.dockerfile import Dockerfile, Instruction, parse_dockerfile

__all__ = ["Dockerfile", "Instruction", "parse_dockerfile"]
