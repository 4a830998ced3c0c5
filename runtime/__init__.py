"""runtime: containers on an overlay root with namespaces and cgroups. Not built yet."""
