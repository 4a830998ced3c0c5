"""builder: Dockerfiles to images (parser, typed instructions, stages, cache, RUN/COPY/ADD, base rootfs)."""

from builder.dockerfile import Dockerfile, Instruction, parse_dockerfile

__all__ = ["Dockerfile", "Instruction", "parse_dockerfile"]
