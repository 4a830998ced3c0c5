"""lazyctr: the command line. It wires the rooms together and holds no domain logic."""
